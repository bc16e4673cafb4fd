"""anonymous = "hold", against a real Redis: a visitor's anonymous events wait until an event says who the
visitor is, then go under that identity in their original order with their original times; unclaimed
ones are counted and filtered when the hold expires; the hold is bounded; a release another enqueue made
first is never made twice."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
import pytest

from pipeline.config import Settings
from pipeline.delivery import Deliverer
from pipeline.ingest import Ingestor, ingest
from pipeline.store import Store
from tests.helpers import dead_letters, pending

EMAIL = "ana.hold@example.com"


def anonymous(n: int, at: str, visitor: str = "anon-1") -> dict[str, Any]:
    return {
        "type": "page",
        "name": f"Page {n}",
        "anonymousId": visitor,
        "messageId": f"h{n}",
        "timestamp": at,
    }


def identify(visitor: str = "anon-1") -> dict[str, Any]:
    return {"type": "identify", "userId": "u-1", "anonymousId": visitor, "messageId": "id-1",
            "traits": {"email": EMAIL}, "timestamp": "2026-11-30T10:10:00Z"}  # fmt: skip


@pytest.fixture
def held(make_settings: Any) -> Settings:
    settings: Settings = make_settings(CLEVERTAP_ANONYMOUS="hold")
    return settings


def test_anonymous_events_wait_and_go_under_the_identity_in_order_with_their_times(
    held: Settings, store: Store
) -> None:
    first = ingest(
        [anonymous(1, "2026-11-30T10:00:00Z"), anonymous(2, "2026-11-30T10:05:00Z")],
        settings=held,
        store=store,
    )
    assert (first.held, first.accepted, first.filtered) == (2, 0, 0) and pending(store) == []
    ingest(
        [{"type": "page", "name": "Other", "anonymousId": "anon-2", "messageId": "o1"}],
        settings=held,
        store=store,
    )
    later = ingest([identify()], settings=held, store=store)
    assert later.accepted == 3  # the two it held, and the identify itself
    records = pending(store)
    assert [(r.get("evtData", {}).get("name"), r["ts"]) for r in records] == [
        ("Page 1", 1796032800),
        ("Page 2", 1796033100),
        (None, 1796033400),
    ]
    assert all(r["identity"] == EMAIL for r in records)
    assert store.stats("default")["anonymous_released"] == 2
    assert store.held_events("default", ["nope"]) == {}
    assert int(store.r.get(store.key("default", "anon:count")) or 0) == 1  # anon-2 still waits


def test_unclaimed_events_are_counted_and_filtered_when_the_hold_expires(
    make_settings: Any, store: Store
) -> None:
    settings = make_settings(CLEVERTAP_ANONYMOUS="hold", CLEVERTAP_ANONYMOUS_HOLD="1")
    ingest(
        [anonymous(1, "2026-11-30T10:00:00Z"), anonymous(2, "2026-11-30T10:01:00Z")],
        settings=settings,
        store=store,
    )
    deliverer = Deliverer(settings, store, lambda *a: None)
    deliverer.sweep()
    assert "anonymous_expired" not in store.stats("default")  # not yet
    time.sleep(1.1)
    deliverer.sweep()
    stats = store.stats("default")
    assert stats["anonymous_expired"] == 2 and stats["filtered"] == 2
    assert (
        store.r.zcard(store.key("default", "anon:idx")) == 0
        and int(store.r.get(store.key("default", "anon:count")) or 0) == 0
    )
    assert ingest([identify()], settings=settings, store=store).accepted == 1  # nothing left to release


def test_the_hold_is_bounded_and_what_does_not_fit_is_filtered(make_settings: Any, store: Store) -> None:
    settings = make_settings(CLEVERTAP_ANONYMOUS="hold", CLEVERTAP_ANONYMOUS_HOLD_MAX="2")
    res = ingest(
        [anonymous(n, "2026-11-30T10:00:00Z", f"v{n}") for n in range(3)], settings=settings, store=store
    )
    assert (res.held, res.filtered) == (2, 1) and store.stats("default")["anonymous_hold_full"] == 1


def test_held_events_another_enqueue_released_first_are_not_queued_again(
    held: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest([anonymous(1, "2026-11-30T10:00:00Z")], settings=held, store=store)
    ingestor = Ingestor(store, held.integration("default"))
    members: list[bytes] = store.r.zrange(store.key("default", "anon:idx"), 0, -1)  # type: ignore[assignment]
    visitors = [v.decode() for v in members]
    stale = store.held_events("default", visitors)
    assert len(stale) == 1  # what a second, concurrent link would have read
    assert ingestor.ingest_chunk([(0, identify())]).accepted == 2  # released: the page and the identify
    # A second link read the held events before the first released them: its claim no longer matches.
    monkeypatch.setattr(store, "held_events", lambda integration, visitors: stale)
    no_dedup = Ingestor(store, dataclasses.replace(held.integration("default"), dedup_window=0))
    again = no_dedup.ingest_chunk([(0, {**identify(), "messageId": "id-2"})])  # dedup would hide a repeat
    names = [r.get("evtData", {}).get("name") for r in pending(store)]
    assert again.accepted == 1 and names.count("Page 1") == 1
    assert int(store.r.get(store.key("default", "anon:count")) or 0) == 0
    assert store.stats("default")["anonymous_released"] == 1


def test_a_visitor_known_in_the_same_chunk_goes_through_at_once(held: Settings, store: Store) -> None:
    chunk = [anonymous(1, "2026-11-30T10:00:00Z"), identify(), anonymous(2, "2026-11-30T10:11:00Z")]
    res = ingest(chunk, settings=held, store=store)
    assert (res.accepted, res.held) == (3, 0)  # both pages stayed held before
    assert [r.get("evtData", {}).get("name") for r in pending(store)] == ["Page 1", None, "Page 2"]
    assert all(r["identity"] == EMAIL for r in pending(store))


def test_what_cannot_be_held_or_no_longer_maps_becomes_a_dead_letter(held: Settings, store: Store) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = {"d": deep}
    big = {**anonymous(1, "2026-11-30T10:00:00Z"), "properties": {"text": "y" * 40_000}}
    nested = {**anonymous(2, "2026-11-30T10:00:00Z"), "properties": {"deep": deep}}
    res = ingest([big, nested], settings=held, store=store)
    assert (res.held, res.rejected) == (0, 2) and len(dead_letters(store)) == 2  # it was a 503 for the batch
    later = {
        **anonymous(3, "2026-11-30T10:01:00Z"),
        "properties": {"long": "z" * 600},
    }  # held: not checked yet
    assert ingest([later], settings=held, store=store).held == 1
    ingest([identify()], settings=held, store=store)
    reasons = [d["reasons"][0] for d in dead_letters(store)]
    assert any("512" in r for r in reasons)  # released, refused as on arrival: a dead letter, not lost


def test_a_replayed_anonymous_event_is_held_once(held: Settings, store: Store) -> None:
    from pipeline.deadletters import mapping_dead_letter

    did, body = mapping_dead_letter("default", anonymous(1, "2026-11-30T10:00:00Z"), ["why"])
    store.r.hset(store.key("default", "dead"), did, body)
    store.r.zadd(store.key("default", "dead:idx"), {did: 1})
    ingestor = Ingestor(store, dataclasses.replace(held.integration("default"), dedup_window=0))
    event = orjson.loads(body)["event"]
    ingestor.ingest_chunk([(0, event)], replaces=[did])
    ingestor.ingest_chunk([(0, event)], replaces=[did])  # a second replay of the same dead letter
    assert int(store.r.get(store.key("default", "anon:count")) or 0) == 1 and dead_letters(store) == []
