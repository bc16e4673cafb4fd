"""Dead letters: list them, replay them, drop them.

Two stages end up here. ``mapping``: the event could not be mapped (the entry holds the original event and
every reason); replaying runs it through the integration's *current* mappings, so fix the config, then
replay. ``api``: CleverTap refused the row, or the batch gave up (the entry holds the record, code and
error); replaying queues the record again as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.config import IntegrationConfig
from pipeline.ingest import Ingestor
from pipeline.store import Store

PAGE = 500


def iter_dead_letters(
    store: Store,
    integration: str,
    stage: str | None = None,
    code: int | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Dead letters oldest first, matching ``stage``, ``code`` and the time range ``since``..``until`` (epoch
    seconds, either end open), read PAGE at a time behind a cursor: flat in memory however many there are,
    and neither skipping nor repeating one when others are removed meanwhile (a replay or purge of what it
    yields, the sweep's retention)."""
    for page in iter_pages(store, integration, stage, code, since, until):
        yield from page


def iter_pages(
    store: Store,
    integration: str,
    stage: str | None = None,
    code: int | None = None,
    since: float | None = None,
    until: float | None = None,
    up_to_now: bool = False,
) -> Iterator[list[dict[str, Any]]]:
    """``iter_dead_letters`` a page at a time (a page may be empty when nothing in it matched).
    ``up_to_now``: only dead letters stored before this call (a replay must not meet the dead letters it
    makes itself)."""
    for page in scan(store, integration, stage, code, since, until, up_to_now=up_to_now):
        yield [entry for _, entry in page.matches]


Cursor = tuple[str, str]  # (ms, id) of a dead letter in dead:idx; ("-inf", "") before the first


@dataclass
class Page:
    """One page read behind the cursor: the dead letters in it that match, each with its own cursor, and
    the cursor at the page's end (to read on from, whether or not its last letters matched)."""

    matches: list[tuple[Cursor, dict[str, Any]]]
    end: Cursor


def scan(
    store: Store,
    integration: str,
    stage: str | None = None,
    code: int | None = None,
    since: float | None = None,
    until: float | None = None,
    after: Cursor = ("-inf", ""),
    up_to_now: bool = False,
) -> Iterator[Page]:
    """Every dead-letter listing's one reader: PAGE at a time, oldest first, after the cursor ``after``."""
    low: int | str = "-inf" if since is None else int(since * 1000)
    high: int | str = "+inf" if until is None else int(until * 1000)
    if up_to_now:
        high = _now_fenced(store) if until is None else min(int(until * 1000), _now_fenced(store))
    cursor = after
    while True:
        page = store.dead_letter_page(integration, cursor, low, high, PAGE)
        if not page:
            return
        cursor = (page[-1][1], page[-1][0])
        matches = []
        for (did, ms), raw in zip(page, store.dead_letters(integration, [d for d, _ in page]), strict=True):
            if raw is None:
                continue
            entry: dict[str, Any] = orjson.loads(raw)
            if (stage is None or entry.get("stage") == stage) and (code is None or entry.get("code") == code):
                matches.append(((ms, did), entry))
        yield Page(matches, cursor)


def _now_fenced(store: Store) -> int:
    """Redis's clock now, in ms, once it has moved past it: everything stored from here on is stamped later
    (dead letters are stamped with Redis's clock, in ms)."""
    now = store.now_ms()
    while store.now_ms() <= now:
        time.sleep(0.001)
    return now


def summarise(store: Store, integration: str) -> dict[str, dict[str, Any]]:
    """Dead letters by kind (``api:<code>``, ``mapping:<reason>``): the count kept in Redis, and an example
    reason from the newest PAGE (``""`` when none of those is of that kind). Reads no more than a page
    however many there are."""
    out = {kind: {"count": n, "example": ""} for kind, n in store.dead_letter_kinds(integration).items()}
    ids = store.newest_dead_letter_ids(integration, PAGE)
    for raw in store.dead_letters(integration, ids):
        if raw is None:
            continue
        entry = orjson.loads(raw)
        kind = entry.get("kind") or "unknown"
        if kind in out and not out[kind]["example"]:
            reasons = entry.get("reasons") or [""]
            out[kind]["example"] = entry.get("error", "") if entry["stage"] == "api" else reasons[0]
    return out


def count(
    store: Store,
    integration: str,
    stage: str | None = None,
    code: int | None = None,
    since: float | None = None,
    until: float | None = None,
) -> dict[str, int]:
    """Dead letters by ``api:<code>`` and ``mapping``: from the counts in Redis when unfiltered, else by
    streaming the matching ones."""
    counts: dict[str, int] = {}
    if stage is None and code is None and since is None and until is None:
        for kind, n in store.dead_letter_kinds(integration).items():
            key = kind if kind.startswith("api:") else kind.split(":")[0]
            counts[key] = counts.get(key, 0) + n
    else:
        for entry in iter_dead_letters(store, integration, stage, code, since, until):
            key = f"api:{entry.get('code')}" if entry["stage"] == "api" else "mapping"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


@dataclass
class ReplayResult:
    replayed_records: int = 0
    remapped_events: int = 0
    rejected_again: int = 0
    missing: list[str] = field(default_factory=list)
    unreplayable: list[str] = field(default_factory=list)  # api dead letters that hold no record to send
    already_replayed: int = 0  # taken by another replay running at the same time


def _renamed(record: Any, renames: dict[str, str]) -> Any:
    if renames and isinstance(record, dict) and record.get("evtName") in renames:
        return {**record, "evtName": renames[record["evtName"]]}
    return record


def replay(
    store: Store,
    config: IntegrationConfig,
    ids: Sequence[str] | None = None,
    stage: str | None = None,
    code: int | None = None,
    rename_events: Mapping[str, str] | None = None,
    since: float | None = None,
    until: float | None = None,
) -> ReplayResult:
    """Replay the given dead letters (or all that match ``stage``/``code``/``since``..``until``, stored up to
    now: a page at a time, flat in memory however many). Each moves atomically: its
    records are queued and the dead letter removed in one script; an event that still does not map gets a
    new dead letter with its new reasons, in that same step.

    ``rename_events`` ({old: new}) renames the event of refused records as they are queued again: after
    renaming an event in the mappings (an account that restricts "Web Page Viewed", say), the rows already
    refused carry the old name and would be refused again as they are."""
    result = ReplayResult()
    renames = dict(rename_events or {})
    ingestor = Ingestor(store, config)
    if ids is not None:
        for start in range(0, len(ids), PAGE):
            part = list(ids[start : start + PAGE])
            entries = []
            for did, raw in zip(part, store.dead_letters(config.name, part), strict=True):
                if raw is None:
                    result.missing.append(did)
                else:
                    entries.append(orjson.loads(raw))
            _replay_page(store, ingestor, entries, renames, result)
        return result
    # Up to now only: an event that is rejected again gets a new dead letter, which this must not meet.
    for entries in iter_pages(store, config.name, stage, code, since, until, up_to_now=True):
        _replay_page(store, ingestor, entries, renames, result)
    return result


def _replay_page(
    store: Store,
    ingestor: Ingestor,
    entries: list[dict[str, Any]],
    renames: dict[str, str],
    result: ReplayResult,
) -> None:
    api = []
    for e in entries:
        if e.get("stage") != "api":
            continue
        if e.get("record") is None:  # a refusal that named no row sent: nothing to send again
            result.unreplayable.append(e["id"])
        else:
            api.append((e["id"], orjson.dumps(_renamed(e["record"], renames))))
    if api:
        result.replayed_records += len(store.replay_records(ingestor.config.name, api))
    mapping = [e for e in entries if e.get("stage") == "mapping"]
    if mapping:
        res = ingestor.ingest_chunk(
            [(n, e["event"]) for n, e in enumerate(mapping)], replaces=[e["id"] for e in mapping]
        )
        result.remapped_events += res.accepted + res.filtered + res.duplicate
        result.rejected_again += res.rejected
        result.already_replayed += res.already_replayed


def drop(
    store: Store,
    integration: str,
    ids: Sequence[str] | None = None,
    stage: str | None = None,
    code: int | None = None,
    since: float | None = None,
    until: float | None = None,
) -> int:
    """Delete the given dead letters, or every one matching the filters (stored up to now), a page at a
    time; returns how many were deleted."""
    if ids is not None:
        return sum(store.drop_dead_letters(integration, ids[i : i + PAGE]) for i in range(0, len(ids), PAGE))
    return sum(
        store.drop_dead_letters(integration, [e["id"] for e in page])
        for page in iter_pages(store, integration, stage, code, since, until, up_to_now=True)
    )
