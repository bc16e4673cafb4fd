"""The dead letters' pages: filtered and paged behind a cursor, one in full, and replay or purge of the
selected or of every matching one (the same :mod:`pipeline.deadletters` and :mod:`pipeline.replay` the CLI
uses)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.console.web import console_of, form, integration_or_404, login_required, render
from pipeline.deadletters import Filter, count, drop, scan
from pipeline.replay import replay

#: Dead letters one page shows.
SHOWN_PER_PAGE = 50
#: Pages of the store's a page reads at most looking for matches (a rare code is found page by page).
MAX_PAGES_READ = 20
#: Selected ids one replay or purge takes at most (ten pages' worth of ticks).
MAX_SELECTED = SHOWN_PER_PAGE * 10
_CURSOR_MS = re.compile(r"-?[0-9]{1,16}")


@login_required
async def dead_letters(request: Request) -> Response:
    console = console_of(request)
    s = console.settings()
    name = request.query_params.get("integration") or (sorted(s.integrations)[0] if s.integrations else "")
    integration_or_404(request, name)
    where, errors = Filter.from_query(name, request.query_params)
    after_ms = request.query_params.get("after_ms", "-inf")
    if after_ms != "-inf" and not _CURSOR_MS.fullmatch(after_ms):
        raise HTTPException(400, "after_ms: a page cursor, as the Next page link gives it")
    after = (after_ms, request.query_params.get("after_id", "")[:100])
    shown: list[dict[str, Any]] = []
    next_cursor: tuple[str, str] | None = None
    for read, page in enumerate(scan(console.store, where, after), start=1):
        cursor = page.end
        for at, entry in page.matches:
            shown.append(entry)
            if len(shown) >= SHOWN_PER_PAGE:
                cursor = at
                break
        if len(shown) >= SHOWN_PER_PAGE or read >= MAX_PAGES_READ:
            next_cursor = cursor
            break
    totals = count(console.store, Filter(name))
    query = {k: v for k, v in request.query_params.items() if k not in ("after_ms", "after_id")}
    return render(request, "dead_letters.html", name=name, names=sorted(s.integrations), entries=shown,
                  errors=errors, query=query, next_cursor=next_cursor, totals=totals,
                  total=sum(totals.values()), done=request.query_params.get("done"))  # fmt: skip


@login_required
async def dead_letter_show(request: Request) -> Response:
    name, did = request.path_params["name"], request.path_params["id"]
    integration_or_404(request, name)
    (raw,) = console_of(request).store.dead_letters(name, [did])
    if raw is None:
        raise HTTPException(404, "no such dead letter (replayed, purged or expired)")
    entry = orjson.loads(raw)
    return render(request, "dead_letter_show.html", name=name, entry=entry,
                  pretty=orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())  # fmt: skip


@login_required
async def dead_letters_act(request: Request) -> Response:
    console = console_of(request)
    name = request.path_params["name"]
    config = integration_or_404(request, name)
    data = await form(request)
    action = str(data.get("action", ""))
    everything = data.get("scope") == "matching"
    ids = None if everything else [str(i) for i in data.getlist("id")][:MAX_SELECTED]
    where, errors = Filter.from_query(name, request.query_params)
    if errors:
        raise HTTPException(400, "; ".join(errors))
    if not ids and not everything:
        return RedirectResponse(_back(request, where, "nothing selected"), status_code=303)
    if action == "replay":
        res = await run_in_threadpool(lambda: replay(console.store, config, ids=ids, where=where))
        done = (f"replayed {res.replayed_records} records, remapped {res.remapped_events} events, "
                f"{res.rejected_again} rejected again, {len(res.missing)} missing")  # fmt: skip
    elif action == "purge":
        if data.get("confirm") != "yes":
            return RedirectResponse(_back(request, where, "tick 'for good' to purge"), status_code=303)
        n = await run_in_threadpool(drop, console.store, where, ids)
        done = f"purged {n} dead letters"
    else:
        raise HTTPException(400, "unknown action")
    return RedirectResponse(_back(request, where, done), status_code=303)


def _back(request: Request, where: Filter, done: str) -> str:
    """The listing the action came from (its filters as typed), with what was done."""
    query = {k: v for k, v in request.query_params.items() if k in ("stage", "code", "since", "until")}
    return "/dead-letters?" + urlencode({"integration": where.integration, **query, "done": done})
