"""The "Forget a user" page: ask for a user to be forgotten (typed confirmation required) and follow the
requests (states, counts of copies removed by place, CleverTap's answers; never the identities). The same
:mod:`pipeline.forget` the CLI uses: the request is written and the user's events suppressed at once, and
the workers' sweep removes the copies and sends CleverTap's delete within seconds."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.console.web import console_of, form, login_required, render
from pipeline.errors import InputError, UnknownIntegration
from pipeline.forget import Forgetter, describe, values_from_lines

#: Requests the page lists, newest first.
SHOWN = 50
#: What must be typed to confirm: forgetting cannot be undone (nor can CleverTap's delete).
CONFIRM = "FORGET"
#: Lines the form takes at most (the request itself takes up to pipeline.forget.MAX_VALUES values).
MAX_LINES = 1000


@login_required
async def forget_page(request: Request) -> Response:
    console = console_of(request)
    s = console.settings()
    rows: list[dict[str, Any]] = []
    for rid in console.store.request_ids(SHOWN):
        req = console.store.request(rid)
        if req is not None:
            shown = describe(req)
            shown["removed"] = sum(int(v) for v in (req.get("counts") or {}).values())
            rows.append({"id": rid, **shown})
    return render(request, "forget.html", rows=rows, names=sorted(s.integrations), confirm_word=CONFIRM,
                  done=request.query_params.get("done"), error=request.query_params.get("error"))  # fmt: skip


@login_required
async def forget_ask(request: Request) -> Response:
    console = console_of(request)
    data = await form(request)
    if str(data.get("confirm", "")).strip() != CONFIRM:
        return _back({"error": f"type {CONFIRM} to confirm: a forgotten user cannot be brought back"})
    lines = str(data.get("values", "")).splitlines()
    if len(lines) > MAX_LINES:
        return _back({"error": f"{len(lines):,} lines: at most {MAX_LINES:,} a request"})
    chosen = [str(n) for n in data.getlist("integration")] or None
    try:
        who = values_from_lines(lines, "the form")
        forgetter = Forgetter(console.settings(), console.store)
        rid = await run_in_threadpool(forgetter.ask, who, chosen)
    except (InputError, UnknownIntegration) as exc:
        return _back({"error": str(exc)})
    return _back({"done": f"forget request {rid}: their events are filtered from now on; the workers remove "
                          "every copy and ask CleverTap to delete the profile"})  # fmt: skip


def _back(query: dict[str, str]) -> Response:
    return RedirectResponse("/forget?" + urlencode(query), status_code=303)
