"""Dead letters: list them, replay them, drop them.

Two stages end up here. ``mapping``: the event could not be mapped (the entry holds the original event and
every reason); replaying runs it through the integration's *current* mappings, so fix the config, then
replay. ``api``: CleverTap refused the row, or the batch gave up (the entry holds the record, code and
error); replaying queues the record again as it is.
"""

from __future__ import annotations

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
    seconds, either end open), read PAGE at a time: flat in memory however many there are."""
    offset = 0
    low = "-inf" if since is None else int(since * 1000)
    high = "+inf" if until is None else int(until * 1000)
    while True:
        ids = store.dead_letter_ids_between(integration, low, high, offset, PAGE)
        if not ids:
            return
        for raw in store.dead_letters(integration, ids):
            if raw is None:
                continue
            entry: dict[str, Any] = orjson.loads(raw)
            if (stage is None or entry.get("stage") == stage) and (code is None or entry.get("code") == code):
                yield entry
        offset += len(ids)


def summarise(store: Store, integration: str) -> dict[str, dict[str, Any]]:
    """Dead letters by stage and code, with one example reason each."""
    out: dict[str, dict[str, Any]] = {}
    for entry in iter_dead_letters(store, integration):
        if entry["stage"] == "api":
            key = f"api:{entry.get('code')}"
            reason = entry.get("error", "")
        else:
            reason = entry["reasons"][0] if entry.get("reasons") else ""
            key = "mapping:" + reason.split(":")[0]
        slot = out.setdefault(key, {"count": 0, "example": reason})
        slot["count"] += 1
    return out


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
) -> ReplayResult:
    """Replay the given dead letters (or all that match ``stage``/``code``). Each moves atomically: its
    records are queued and the dead letter removed in one script; an event that still does not map gets a
    new dead letter with its new reasons, in that same step.

    ``rename_events`` ({old: new}) renames the event of refused records as they are queued again: after
    renaming an event in the mappings (an account that restricts "Web Page Viewed", say), the rows already
    refused carry the old name and would be refused again as they are."""
    result = ReplayResult()
    if ids is not None:
        raws = store.dead_letters(config.name, list(ids))
        entries = []
        for did, raw in zip(ids, raws, strict=True):
            if raw is None:
                result.missing.append(did)
            else:
                entries.append(orjson.loads(raw))
    else:
        entries = list(iter_dead_letters(store, config.name, stage, code))
    renames = dict(rename_events or {})
    api = []
    for e in entries:
        if e.get("stage") != "api":
            continue
        if e.get("record") is None:  # a refusal that named no row sent: nothing to send again
            result.unreplayable.append(e["id"])
        else:
            api.append((e["id"], orjson.dumps(_renamed(e["record"], renames))))
    for start in range(0, len(api), PAGE):
        result.replayed_records += len(store.replay_records(config.name, api[start : start + PAGE]))
    ingestor = Ingestor(store, config)
    mapping = [e for e in entries if e.get("stage") == "mapping"]
    for start in range(0, len(mapping), PAGE):
        part = mapping[start : start + PAGE]
        res = ingestor.ingest_chunk(
            [(n, e["event"]) for n, e in enumerate(part)], replaces=[e["id"] for e in part]
        )
        result.remapped_events += res.accepted + res.filtered + res.duplicate
        result.rejected_again += res.rejected
        result.already_replayed += res.already_replayed
    return result
