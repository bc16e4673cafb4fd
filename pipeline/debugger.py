"""The event debugger: the last send attempts of each integration, with CleverTap's raw answer.

Delivery keeps each attempt in ``P:{I}:debug`` in the same script as its outcome (``lua/lib/debugger.lua``),
the newest ``debugger_size`` of them. The CLI's ``debugger`` verb and the console's page both read them here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline import constants as C
from pipeline.store import Store


def recent(store: Store, names: Iterable[str], failed: bool = False, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` attempts of these integrations, newest first, each with its ``integration``;
    ``failed``: only those that did not deliver every row."""
    entries = sorted(
        ({"integration": n, **e} for n in names for e in store.debug_entries(n)),
        key=lambda e: -float(e["time"]),
    )
    if failed:
        entries = [e for e in entries if e["result"] != "delivered"]
    return entries[:limit]


def of_batch(store: Store, names: Iterable[str], batch_id: str) -> list[dict[str, Any]]:
    """Every kept attempt of one batch, newest first, each with its ``integration``, its raw answer as
    ``body`` (decoded from JSON where it is JSON), and ``refused``: the rows CleverTap named, with code and
    error."""
    found = []
    for name in names:
        for entry in store.debug_entries(name, C.MAX_DEBUGGER_SIZE):  # every one it keeps
            if entry["batch_id"] != batch_id:
                continue
            attempt = {"integration": name, **entry}
            with contextlib.suppress(orjson.JSONDecodeError):
                attempt["body"] = orjson.loads(attempt["body"])
            attempt["refused"] = refused_rows(attempt["body"])
            found.append(attempt)
    return found


def refused_rows(body: Any) -> list[dict[str, Any]]:
    """The rows a CleverTap answer says it did not process (``unprocessed``), as code and error."""
    rows = body.get("unprocessed") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        return []
    return [{"code": r.get("code"), "error": r.get("error")} for r in rows if isinstance(r, dict)]
