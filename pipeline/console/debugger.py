"""The event debugger's pages: the last send attempts, and one batch's attempts with CleverTap's raw
answer (read by :mod:`pipeline.debugger`, as the CLI's ``debugger`` verb reads them)."""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pipeline import debugger as attempts
from pipeline.console.web import console_of, integration_or_404, login_required, render

#: Attempts the debugger page lists at most.
SHOWN = 200


@login_required
async def debugger(request: Request) -> Response:
    console = console_of(request)
    s = console.settings()
    chosen = request.query_params.get("integration", "")
    failed = request.query_params.get("failed") == "1"
    names = [chosen] if chosen in s.integrations else sorted(s.integrations)
    entries = attempts.recent(console.store, names, failed, SHOWN)
    return render(request, "debugger.html", entries=entries, names=sorted(s.integrations), chosen=chosen,
                  failed=failed)  # fmt: skip


@login_required
async def debugger_show(request: Request) -> Response:
    name, batch = request.path_params["name"], request.path_params["batch"]
    integration_or_404(request, name)
    found = attempts.of_batch(console_of(request).store, [name], batch)
    if not found:
        raise HTTPException(404, "no attempt of that batch is kept (the debugger keeps the last ones)")
    for entry in found:
        body = entry["body"]
        entry["pretty"] = (
            body if isinstance(body, str) else orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
        )
    return render(request, "debugger_show.html", name=name, batch=batch, entries=found)
