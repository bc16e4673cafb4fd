"""Ingest against a real Redis: what lands in the queue, de-duplication, dead letters, shared identities."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

from pipeline.ingest import ingest
from pipeline.local.sample import SPEC_PAYLOAD, SPEC_PURCHASE
from pipeline.store import Store
from tests.helpers import ROOT, environment, events


def pending(store: Store, integ: str = "default") -> list[dict[str, Any]]:
    return [orjson.loads(r) for r in store.r.lrange(store.key(integ, "pending"), 0, -1)]


def dead(store: Store, integ: str = "default") -> list[dict[str, Any]]:
    ids = store.dead_letter_ids(integ, 0, 1000)
    return [orjson.loads(x) for x in store.dead_letters(integ, ids) if x]


def test_queued_records_are_the_mapped_json_joinable_into_a_request_body(
    make_settings: Any, store: Store
) -> None:
    result = ingest([SPEC_PURCHASE], settings=make_settings(), store=store)
    assert result.counts() == {
        "accepted": 1, "filtered": 0, "duplicate": 0, "rejected": 0, "fields_dropped": 0, "held": 0,
    }  # fmt: skip
    raw: list[bytes] = store.r.lrange(store.key("default", "pending"), 0, -1)  # type: ignore[assignment]
    assert orjson.loads(b'{"d":[' + b",".join(raw) + b"]}") == SPEC_PAYLOAD
    assert store.ready_integrations() == {"default"}
    assert store.stats("default")["accepted"] == 1


def test_counts_filtered_rejected_and_keeps_rejections_as_dead_letters(
    make_settings: Any, store: Store
) -> None:
    events: list[Any] = [
        {**SPEC_PURCHASE, "messageId": "m1"},
        {**SPEC_PURCHASE, "messageId": "m2", "context": {"traits": {"email": "x@example.com"}}},  # no consent
        {
            "type": "track",
            "event": "X",
            "messageId": "m3",
            "context": {"consent": {"categories": ["marketing"]}},
        },  # no identity at all (an anonymousId alone would be filtered: anonymous traffic)
        "not an object",
    ]
    result = ingest(events, settings=make_settings(CLEVERTAP_CONSENT_CATEGORIES="marketing"), store=store)
    assert result.counts() == {
        "accepted": 1, "filtered": 1, "duplicate": 0, "rejected": 2, "fields_dropped": 0, "held": 0,
    }  # fmt: skip
    assert [r.index for r in result.rejections] == [2, 3]
    letters = dead(store)
    assert [d["stage"] for d in letters] == ["mapping", "mapping"]
    assert letters[0]["event"]["messageId"] == "m3"
    assert "missing identity" in letters[0]["reasons"][0]
    assert letters[1]["event"] == "not an object"
    assert len(pending(store)) == 1


def test_duplicate_message_ids_within_the_window_are_dropped_and_counted(
    make_settings: Any, store: Store
) -> None:
    settings = make_settings()
    event = {"type": "track", "event": "X", "userId": "u1", "messageId": "same"}
    first = ingest([event, event], settings=settings, store=store)
    again = ingest([event], settings=settings, store=store)
    assert (first.accepted, first.duplicate, again.duplicate) == (1, 1, 1)
    assert len(pending(store)) == 1
    # Without a messageId nothing can be de-duplicated; a window of 0 turns it off.
    ingest([{**event, "messageId": None}] * 2, settings=settings, store=store)
    ingest([event], settings=make_settings(CLEVERTAP_DEDUP_WINDOW="0"), store=store)
    assert len(pending(store)) == 4


def test_rejected_events_are_not_marked_seen_so_a_fixed_resubmission_goes_through(
    make_settings: Any, store: Store
) -> None:
    settings = make_settings()
    bad = {"type": "track", "event": "X", "messageId": "fix-me"}
    assert ingest([bad], settings=settings, store=store).rejected == 1
    assert ingest([{**bad, "userId": "u1"}], settings=settings, store=store).accepted == 1


def test_identify_email_is_used_for_later_events_of_the_same_user(make_settings: Any, store: Store) -> None:
    settings = make_settings()
    events = [
        {"type": "track", "event": "Before", "userId": "u7"},
        {"type": "identify", "userId": "u7", "traits": {"email": "u7@example.com"}},
        {"type": "track", "event": "After", "userId": "u7"},
    ]
    ingest(events, settings=settings, store=store)
    ingest([{"type": "track", "event": "Later", "userId": "u7"}], settings=settings, store=store)
    records = pending(store)
    assert records[0].get("objectId") == "u7"
    assert records[1]["type"] == "profile"
    assert [r.get("identity") for r in records[2:]] == ["u7@example.com", "u7@example.com"]


def test_identity_is_shared_across_processes(redis_url: str, make_settings: Any, store: Store) -> None:
    env = environment(redis_url)
    identify = {"type": "identify", "userId": "p1", "traits": {"email": "p1@example.com"}}
    code = f"import os, pipeline; os.environ.update({env!r}); print(pipeline.ingest([{identify!r}]).accepted)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, check=True, timeout=60)
    assert out.stdout.strip() == b"1"
    ingest([{"type": "track", "event": "Seen", "userId": "p1"}], settings=make_settings(), store=store)
    assert pending(store)[-1]["identity"] == "p1@example.com"


def test_integrations_are_kept_apart(redis_url: str, tmp_path: Any, store: Store) -> None:
    from pipeline.config import load_settings

    path = tmp_path / "c.toml"
    path.write_text(
        f'redis_url = "{redis_url}"\n'
        '[integrations.a]\naccount_id="A"\npasscode="p"\nregion="us1"\n'
        '[integrations.b]\naccount_id="B"\npasscode="p"\nregion="in1"\n'
    )
    settings = load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)})
    event = {"type": "track", "event": "X", "userId": "u1", "messageId": "m"}
    ingest([event], "a", settings=settings, store=store)
    ingest([event], "b", settings=settings, store=store)  # the same messageId is new to b
    assert len(pending(store, "a")) == len(pending(store, "b")) == 1
    assert store.ready_integrations() == {"a", "b"}


def test_a_redis_that_lost_its_scripts_still_queues_and_replays(make_settings: Any, store: Store) -> None:
    from pipeline.deadletters import dead_letter
    from pipeline.replay import replay

    settings = make_settings()
    store.r.script_flush()  # what a restarted or promoted Redis has: no script cached
    assert ingest(events(2), settings=settings, store=store).accepted == 2
    did, body = dead_letter("default", "api", code=509, error="x", record={"type": "event"})
    store.r.hset(store.key("default", "dead"), did, body)
    store.r.zadd(store.key("default", "dead:idx"), {did: 1})
    store.r.script_flush()
    assert replay(store, settings.integration("default"), ids=[did]).replayed_records == 1
    assert store.depth("default")["pending"] == 3
