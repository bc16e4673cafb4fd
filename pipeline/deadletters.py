"""Dead letters: what they hold, how they are filtered, listed, counted and dropped.

Two stages end up here. ``mapping``: the event could not be mapped (the entry holds the original event and
every reason). ``api``: CleverTap refused the row, or the batch gave up (the entry holds the record, code and
error). :mod:`pipeline.replay` queues them again.

An entry is one JSON object in ``P:{I}:dead`` (see :mod:`pipeline.keys`) whose first two keys are its id and
its kind: the Lua scripts count dead letters by kind without decoding them (``lua/lib/dead.lua``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.policy import RowRejection
from pipeline.store import Store, new_id

#: Dead letters read from Redis per call (ids, then entries): a page is a few hundred KB at most.
READ_PAGE = 500
STAGES = ("mapping", "api")

# ------------------------------------------------------------------------------------------ the entry


def dead_letter_kind(stage: str, fields: dict[str, Any]) -> str:
    """What ``dead:kinds`` counts a dead letter under: ``api:<code>``, or ``mapping:`` and the part of its
    first reason before a colon (``mapping:missing identity``); letters, digits and ``_.- ()`` only."""
    if stage == "api":
        kind = f"api:{fields.get('code')}"
    else:
        reasons = fields.get("reasons") or [""]
        kind = "mapping:" + str(reasons[0]).split(":")[0]
    return _KIND_UNSAFE.sub("", kind)[:80]


_KIND_UNSAFE = re.compile(r"[^A-Za-z0-9_.: ()-]")


def dead_letter(integration: str, stage: str, **fields: Any) -> tuple[str, bytes]:
    """A dead-letter entry (``stage`` mapping or api) and its id, ready for the scripts that store it. Its
    kind is the second key: the scripts count dead letters by kind without decoding them."""
    did = new_id()
    entry = {
        "id": did,
        "kind": dead_letter_kind(stage, fields),
        "integration": integration,
        "stage": stage,
        "time": round(time.time(), 3),
        **fields,
    }
    try:
        return did, orjson.dumps(entry, default=str)
    except TypeError:  # what a dead letter keeps may be anything that arrived, e.g. an integer over 64 bits
        pass
    try:
        return did, orjson.dumps(_jsonable(entry), default=str)
    except TypeError:  # nested deeper than orjson writes (254 levels): keep it cut at KEPT_DEPTH levels
        return did, orjson.dumps(_jsonable(entry, cut=KEPT_DEPTH), default=str)


#: How deep a dead letter keeps what arrived nested too deep to write whole (the rest: a marker).
KEPT_DEPTH = 16
CUT = "(nested deeper: not kept)"


def _jsonable(value: Any, cut: int | None = None) -> Any:
    """``value`` with what JSON (and orjson) cannot hold as it is, integers over 64 bits, made text; with
    ``cut``, anything nested deeper than that many levels replaced by a marker."""
    if cut is not None and cut <= 0 and isinstance(value, dict | list | tuple):
        return CUT
    deeper = None if cut is None else cut - 1
    if isinstance(value, dict):
        return {str(k): _jsonable(v, deeper) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, deeper) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


def mapping_dead_letter(integration: str, event: Any, reasons: list[str]) -> tuple[str, bytes]:
    """An event that could not be mapped, kept whole with every reason."""
    return dead_letter(integration, "mapping", reasons=reasons, event=event)


def api_dead_letter(
    integration: str, batch_id: str, rejection: RowRejection, attempts: int, http_status: int | None
) -> tuple[str, bytes]:
    """A row CleverTap refused (or that gave up), kept with its code, error and the record."""
    return dead_letter(
        integration,
        "api",
        code=rejection.code,
        error=rejection.error,
        row=None if rejection.row is None else rejection.row + 1,
        unconfirmed=rejection.unconfirmed,
        batch_id=batch_id,
        attempts=attempts,
        http_status=http_status,
        record=rejection.record,
    )


# ----------------------------------------------------------------------------------------- the filter


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601 (``2026-11-29T20:00:00Z``; a time without a zone is
    UTC). ValueError names what is wrong."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or abs(number) > 1e11:  # not a time: nan, inf, past year 5000
            raise ValueError(f"{text[:40]!r} is not a time: epoch seconds must be a finite number")
        return number
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is not a time: give epoch seconds or ISO 8601 (YYYY-MM-DDTHH:MM, UTC unless it "
            "has a zone)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


_CODE = re.compile(r"^[0-9]{1,6}$")


@dataclass(frozen=True)
class Filter:
    """Which dead letters of one integration a verb works on: a stage, a CleverTap code, and a time range
    (epoch seconds, either end open). Every listing, count, replay and drop takes one."""

    integration: str
    stage: str | None = None
    code: int | None = None
    since: float | None = None
    until: float | None = None

    @property
    def everything(self) -> bool:
        """No condition at all: the counts kept in Redis answer without reading a letter."""
        return self.stage is None and self.code is None and self.since is None and self.until is None

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Stage and code (the time range is applied on Redis's index, by the time it was stored)."""
        return (self.stage is None or entry.get("stage") == self.stage) and (
            self.code is None or entry.get("code") == self.code
        )

    @classmethod
    def from_args(cls, args: Any) -> Filter:
        """From the CLI's ``--integration/--stage/--code/--since/--until`` (already parsed by argparse)."""
        return cls(args.integration, args.stage, args.code, args.since, args.until)

    @classmethod
    def from_query(cls, integration: str, query: Mapping[str, str]) -> tuple[Filter, list[str]]:
        """From the console's query string (stage, code, since, until as typed): the filter, and an error
        for each value that is not one (that condition is then left out)."""
        errors: list[str] = []
        stage = query.get("stage") or None
        if stage not in (None, *STAGES):
            errors.append("stage: api or mapping")
            stage = None
        code_text = query.get("code", "").strip()
        code = int(code_text) if _CODE.match(code_text) else None
        if code_text and code is None:
            errors.append("code: a number")
        times: list[float | None] = []
        for name in ("since", "until"):
            text = query.get(name, "").strip()
            try:
                times.append(parse_time(text) if text else None)
            except ValueError as exc:
                errors.append(f"{name}: {exc}")
                times.append(None)
        return cls(integration, stage, code, times[0], times[1]), errors


# ----------------------------------------------------------------------------------------- reading

Cursor = tuple[str, str]  # (ms, id) of a dead letter in dead:idx; ("-inf", "") before the first


@dataclass
class Page:
    """One page read behind the cursor: the dead letters in it that match, each with its own cursor, and
    the cursor at the page's end (to read on from, whether or not its last letters matched)."""

    matches: list[tuple[Cursor, dict[str, Any]]]
    end: Cursor


def scan(
    store: Store, where: Filter, after: Cursor = ("-inf", ""), up_to_now: bool = False
) -> Iterator[Page]:
    """Every dead-letter listing's one reader: READ_PAGE at a time, oldest first, after the cursor
    ``after``: flat in memory however many there are, and neither skipping nor repeating one when others
    are removed meanwhile (a replay or purge of what it yields, the sweep's retention). ``up_to_now``: only
    dead letters stored before this call (a replay must not meet the dead letters it makes itself)."""
    low: int | str = "-inf" if where.since is None else int(where.since * 1000)
    high: int | str = "+inf" if where.until is None else int(where.until * 1000)
    if up_to_now:
        high = _now_fenced(store) if where.until is None else min(int(where.until * 1000), _now_fenced(store))
    cursor = after
    name = where.integration
    while True:
        page = store.dead_letter_page(name, cursor, low, high, READ_PAGE)
        if not page:
            return
        cursor = (page[-1][1], page[-1][0])
        matches = []
        for (did, ms), raw in zip(page, store.dead_letters(name, [d for d, _ in page]), strict=True):
            if raw is None:
                continue
            entry: dict[str, Any] = orjson.loads(raw)
            if where.matches(entry):
                matches.append(((ms, did), entry))
        yield Page(matches, cursor)


def iter_pages(store: Store, where: Filter, up_to_now: bool = False) -> Iterator[list[dict[str, Any]]]:
    """The matching dead letters a page at a time (a page may be empty when nothing in it matched)."""
    for page in scan(store, where, up_to_now=up_to_now):
        yield [entry for _, entry in page.matches]


def iter_dead_letters(store: Store, where: Filter) -> Iterator[dict[str, Any]]:
    """The matching dead letters, oldest first (see :func:`scan`)."""
    for page in iter_pages(store, where):
        yield from page


def _now_fenced(store: Store) -> int:
    """Redis's clock now, in ms, once it has moved past it: everything stored from here on is stamped later
    (dead letters are stamped with Redis's clock, in ms)."""
    now = store.now_ms()
    while store.now_ms() <= now:
        time.sleep(0.001)
    return now


def entries(store: Store, integration: str, ids: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(the dead letters with these ids, the ids not found), READ_PAGE at a time."""
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    for start in range(0, len(ids), READ_PAGE):
        part = list(ids[start : start + READ_PAGE])
        for did, raw in zip(part, store.dead_letters(integration, part), strict=True):
            if raw is None:
                missing.append(did)
            else:
                found.append(orjson.loads(raw))
    return found, missing


def summarise(store: Store, integration: str) -> dict[str, dict[str, Any]]:
    """Dead letters by kind (``api:<code>``, ``mapping:<reason>``): the count kept in Redis, and an example
    reason from the newest READ_PAGE (``""`` when none of those is of that kind). Reads no more than a page
    however many there are."""
    out = {kind: {"count": n, "example": ""} for kind, n in store.dead_letter_kinds(integration).items()}
    ids = store.newest_dead_letter_ids(integration, READ_PAGE)
    for raw in store.dead_letters(integration, ids):
        if raw is None:
            continue
        entry = orjson.loads(raw)
        kind = entry.get("kind") or "unknown"
        if kind in out and not out[kind]["example"]:
            reasons = entry.get("reasons") or [""]
            out[kind]["example"] = entry.get("error", "") if entry["stage"] == "api" else reasons[0]
    return out


def count(store: Store, where: Filter) -> dict[str, int]:
    """Dead letters by ``api:<code>`` and ``mapping``: from the counts in Redis when unfiltered, else by
    streaming the matching ones."""
    counts: dict[str, int] = {}
    if where.everything:
        for kind, n in store.dead_letter_kinds(where.integration).items():
            key = kind if kind.startswith("api:") else kind.split(":")[0]
            counts[key] = counts.get(key, 0) + n
    else:
        for entry in iter_dead_letters(store, where):
            key = f"api:{entry.get('code')}" if entry["stage"] == "api" else "mapping"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def drop(store: Store, where: Filter, ids: Sequence[str] | None = None) -> int:
    """Delete the dead letters with these ids, or (``ids`` None) every one matching ``where`` stored up to
    now, a page at a time; returns how many were deleted."""
    name = where.integration
    if ids is not None:
        return sum(
            store.drop_dead_letters(name, ids[i : i + READ_PAGE]) for i in range(0, len(ids), READ_PAGE)
        )
    return sum(
        store.drop_dead_letters(name, [e["id"] for e in page])
        for page in iter_pages(store, where, up_to_now=True)
    )
