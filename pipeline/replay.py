"""Replaying dead letters: queue them again, each in one atomic step, or say what a replay would do.

``api`` dead letters are queued again as they are (their record, optionally with the event renamed);
``mapping`` ones go through the integration's *current* mappings, so fix the configuration, then replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from pipeline.config import IntegrationConfig
from pipeline.deadletters import READ_PAGE, Filter, entries, iter_dead_letters, iter_pages
from pipeline.forget import record_values, suppressed
from pipeline.ingest import STALE_TRIES, Ingestor
from pipeline.store import StaleForgotten, Store


@dataclass
class ReplayResult:
    replayed_records: int = 0
    remapped_events: int = 0
    rejected_again: int = 0
    missing: list[str] = field(default_factory=list)
    unreplayable: list[str] = field(default_factory=list)  # api dead letters that hold no record, import rows
    already_replayed: int = 0  # taken by another replay running at the same time
    forgotten: int = 0  # records of a forgotten user: not queued again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReplayPlan:
    """What a replay would do (``--dry-run``), changing nothing."""

    would_replay_records: int = 0
    would_remap_events: int = 0
    unreplayable: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, **asdict(self)}


def _renamed(record: Any, renames: Mapping[str, str]) -> Any:
    if renames and isinstance(record, dict) and record.get("evtName") in renames:
        return {**record, "evtName": renames[record["evtName"]]}
    return record


def replay(
    store: Store,
    config: IntegrationConfig,
    *,
    ids: Sequence[str] | None = None,
    where: Filter | None = None,
    rename_events: Mapping[str, str] | None = None,
) -> ReplayResult:
    """Replay the dead letters with these ``ids``, or (``ids`` None) every one ``where`` matches that was
    stored up to now: a page at a time, flat in memory however many. Each moves atomically: its records
    are queued and the dead letter removed in one script; an event that still does not map gets a new dead
    letter with its new reasons, in that same step.

    ``rename_events`` ({old: new}) renames the event of refused records as they are queued again: after
    renaming an event in the mappings (an account that restricts "Web Page Viewed", say), the rows already
    refused carry the old name and would be refused again as they are."""
    where = where or Filter(config.name)
    if where.integration != config.name:
        raise ValueError(f"a filter for {where.integration!r} cannot replay into {config.name!r}")
    result = ReplayResult()
    renames = dict(rename_events or {})
    ingestor = Ingestor(store, config)
    if ids is not None:
        for start in range(0, len(ids), READ_PAGE):
            found, missing = entries(store, config.name, ids[start : start + READ_PAGE])
            result.missing += missing
            _replay_page(store, ingestor, found, renames, result)
        return result
    # Up to now only: an event that is rejected again gets a new dead letter, which this must not meet.
    for page in iter_pages(store, where, up_to_now=True):
        _replay_page(store, ingestor, page, renames, result)
    return result


def _replay_page(
    store: Store,
    ingestor: Ingestor,
    page: list[dict[str, Any]],
    renames: dict[str, str],
    result: ReplayResult,
) -> None:
    api = []
    for e in page:
        if e.get("stage") != "api":
            continue
        if e.get("record") is None:  # a refusal that named no row sent: nothing to send again
            result.unreplayable.append(e["id"])
        else:
            api.append((e["id"], orjson.dumps(_renamed(e["record"], renames))))
    if api:
        result.replayed_records += _replay_api(store, ingestor.config.name, api, result)
    mapping = []
    for e in page:
        if e.get("stage") != "mapping":
            continue
        if "event" in e and "import" not in e:
            mapping.append(e)
        else:  # a row an import refused: fix the file and import it again (the lane, not the live queue)
            result.unreplayable.append(e["id"])
    if mapping:
        res = ingestor.ingest_chunk(
            [(n, e["event"]) for n, e in enumerate(mapping)], replaces=[e["id"] for e in mapping]
        )
        result.remapped_events += res.accepted + res.filtered + res.duplicate
        result.rejected_again += res.rejected
        result.already_replayed += res.already_replayed


def _replay_api(store: Store, name: str, items: list[tuple[str, bytes]], result: ReplayResult) -> int:
    """Queue api dead letters' records again, but never a forgotten user's (left for the forget request to
    remove), filtered with the suppression list as the replay script finds it."""
    for attempt in range(STALE_TRIES):
        gen, forgotten = store.forgotten_view(name, refresh=attempt > 0)
        now_ms = int(time.time() * 1000)
        keep = [
            (i, r)
            for i, r in items
            if not (forgotten and suppressed(record_values(_loads(r)), forgotten, now_ms))
        ]
        try:
            moved = len(store.replay_records(name, keep, gen)) if keep else 0
        except StaleForgotten:
            continue
        result.forgotten += len(items) - len(keep)
        return moved
    raise StaleForgotten(f"{name}: the suppression list kept changing during {STALE_TRIES} tries")


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def plan(store: Store, where: Filter, ids: Sequence[str] | None = None) -> ReplayPlan:
    """What :func:`replay` would do with the same selection, changing nothing (streaming)."""
    out = ReplayPlan()
    found: Iterable[dict[str, Any]]
    if ids is not None:
        found, out.missing = entries(store, where.integration, ids)
    else:
        found = iter_dead_letters(store, where)
    for e in found:
        if e.get("stage") == "mapping" and "event" in e and "import" not in e:
            out.would_remap_events += 1
        elif e.get("stage") == "mapping" or e.get("record") is None:
            out.unreplayable.append(e["id"])
        else:
            out.would_replay_records += 1
    return out
