"""Many accounts, big backlogs: bounded dispatch, the adaptive limit, memory bounded by design."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from pipeline.deadletters import dead_letter
from pipeline.delivery import Deliverer
from pipeline.errors import QueueFull
from pipeline.ingest import Ingestor
from pipeline.local.emulator import Emulator, Faults
from pipeline.store import Store, eviction_warning
from tests.helpers import ACC, PASS, Dispatched, emulator_settings, events, pending, run_message


def test_the_effective_limit_comes_down_on_429s_and_back_up_slowly(store: Store) -> None:
    assert store.effective_limit("A", 15) == 15
    assert store.adapt_limit("A", 15, throttled=True) == pytest.approx(12.75)
    assert store.adapt_limit("A", 15, throttled=True) == pytest.approx(12.75)  # one congestion, one cut
    assert store.adapt_limit("A", 15, throttled=True, cooldown_s=0) == pytest.approx(10.8375)
    ups = 0
    while store.effective_limit("A", 15) < 11.8375:  # fast back to just below where the last cut was
        store.adapt_limit("A", 15, throttled=False)
        ups += 1
    assert ups < 15
    while store.effective_limit("A", 15) < 15:  # then slowly: probing whether the other client left
        store.adapt_limit("A", 15, throttled=False)
        ups += 1
    assert 250 < ups < 600
    assert store.adapt_limit("A", 15, throttled=False) == 15  # never above the configured limit
    # Tokens follow the effective limit.
    store.adapt_limit("A", 15, throttled=True, cooldown_s=0)
    taken = [store.acquire_token("A", 15, 30, f"t{i}")[0] for i in range(15)]
    assert sum(taken) == 12


def test_a_429_from_another_client_lowers_the_accounts_limit(redis_url: str, store: Store) -> None:
    # Another client holds 5 of the 15 slots: the 11th request of this pipeline is answered 429.
    with Emulator({ACC: PASS}, Faults(held_slots=5, latency_ms=300)) as emu:
        settings = emulator_settings(redis_url, emu.url, CLEVERTAP_BATCH_SIZE="1")
        d = Deliverer(settings, store, Dispatched())
        Ingestor(store, settings.integration("default")).ingest(events(15))
        d.assemble()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(15) as pool:
            results = list(pool.map(lambda m: run_message(d, m).result, d.dispatch.take()))  # type: ignore[attr-defined]
    assert "retry" in results
    assert store.effective_limit(ACC, 15) < 15


def test_remembered_emails_expire_after_their_retention(store: Store, make_settings: Any) -> None:
    ingestor = Ingestor(store, make_settings(CLEVERTAP_IDENTITY_RETENTION="1").integration("default"))
    ingestor.ingest([{"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}}])
    assert store.known_emails("default", ["u1"]) == {"u1": "a@example.com"}
    time.sleep(1.1)
    ingestor.ingest([{"type": "identify", "userId": "u2", "traits": {"email": "b@example.com"}}])
    assert store.known_emails("default", ["u1", "u2"]) == {"u2": "b@example.com"}
    assert store.r.zcard(store.key("default", "ids:seen")) == 1


def test_the_messageid_set_keeps_nothing_once_the_window_is_zero(store: Store, make_settings: Any) -> None:
    Ingestor(store, make_settings().integration("default")).ingest(events(10))
    assert store.r.zcard(store.key("default", "seen")) == 10
    Ingestor(store, make_settings(CLEVERTAP_DEDUP_WINDOW="0").integration("default")).ingest(
        events(1, start=10)
    )
    assert store.r.exists(store.key("default", "seen")) == 0


def test_ingest_refuses_past_the_high_water_mark_and_queues_nothing(store: Store, make_settings: Any) -> None:
    ingestor = Ingestor(store, make_settings(CLEVERTAP_MAX_PENDING="5").integration("default"))
    ingestor.ingest(events(5))
    with pytest.raises(QueueFull, match="high-water"):
        ingestor.ingest(events(3, start=5))
    assert len(pending(store)) == 5 and store.stats("default")["accepted"] == 5


def test_dead_letters_are_kept_for_their_age_and_count(redis_url: str, store: Store) -> None:
    settings = emulator_settings(
        redis_url, "http://unused", CLEVERTAP_DEAD_LETTER_MAX_AGE="1", CLEVERTAP_DEAD_LETTER_MAX_COUNT="3"
    )
    d = Deliverer(settings, store, Dispatched())
    for n in range(5):  # stored as the finish script stores them, with their kind counted
        did, body = dead_letter("default", "api", code=509 if n % 2 else 513, error="x", record={"n": n})
        store.r.hset(store.key("default", "dead"), did, body)
        store.r.zadd(store.key("default", "dead:idx"), {did: int(time.time() * 1000) + n})
        store.r.hincrby(store.key("default", "dead:kinds"), f"api:{509 if n % 2 else 513}", 1)
    store.r.zadd(store.key("default", "dead:idx"), {"orphan": 0})  # an index entry whose letter is gone
    d.sweep()
    assert store.dead_letter_count("default") == 3  # the two oldest went: at most three are kept
    assert store.r.zscore(store.key("default", "dead:idx"), "orphan") is None  # and never lingers
    assert store.dead_letter_kinds("default") == {"api:509": 1, "api:513": 2}  # n = 2, 3, 4 are left
    time.sleep(1.1)
    d.sweep()
    assert store.dead_letter_count("default") == 0 and store.stats("default")["dead_letters_expired"] == 5
    assert store.dead_letter_kinds("default") == {} and store.r.zcard(store.key("default", "dead:idx")) == 0
    # Counts that drifted (an older version removed letters without counting) heal once none is left.
    store.r.hincrby(store.key("default", "dead:kinds"), "api:509", 7)
    d.sweep()
    assert store.r.exists(store.key("default", "dead:kinds")) == 0


def test_a_worker_warns_when_redis_may_evict_keys(redis_url: str) -> None:
    assert eviction_warning(redis_url) is None  # the test server runs with noeviction
    client = redis.Redis.from_url(redis_url)
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        warning = eviction_warning(redis_url)
        assert warning is not None and "noeviction" in warning and "allkeys-lru" in warning
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert eviction_warning("redis://127.0.0.1:1/0") is None  # cannot tell: says nothing


def test_a_full_queue_makes_an_ingest_message_wait_not_dead_letters(store: Store, make_settings: Any) -> None:
    from pipeline.ingest import IngestMessage

    ingestor = Ingestor(store, make_settings(CLEVERTAP_MAX_PENDING="5").integration("default"))
    ingestor.ingest(events(5))
    with pytest.raises(QueueFull):
        ingestor.ingest_message(IngestMessage("msg-1", events(3, start=5)))  # the task retries it later
    assert store.dead_letter_count("default") == 0 and store.chunks_done("default", "msg-1") == 0


def test_batches_backing_off_do_not_stop_the_rest(redis_url: str, store: Store) -> None:
    settings = emulator_settings(
        redis_url, "http://unused", CLEVERTAP_BATCH_SIZE="10", CLEVERTAP_FLUSH_INTERVAL="60"
    )
    d = Deliverer(settings, store, Dispatched())
    Ingestor(store, settings.integration("default")).ingest(events(2000))
    assert d.assemble() == {"default": 30}
    # Every open batch is backing off for minutes (a failing stretch): new ones are cut, up to 4 x the cap.
    store.r.zadd(store.key("default", "open"), {b: 10**13 for b in store.open_batches("default")})
    assert d.assemble() == {"default": 30}
    for _ in range(4):
        store.r.zadd(store.key("default", "open"), {b: 10**13 for b in store.open_batches("default")})
        d.assemble()
    assert len(store.open_batches("default")) == 4 * 30  # and no more: the backlog waits as records


def test_a_429_says_how_many_slots_are_missing_and_failed_probes_slow_the_next(store: Store) -> None:
    # the 11th request in flight was refused: another client holds 5 of the 15 slots
    assert store.adapt_limit("A", 15, throttled=True, in_flight=11) == 10
    assert store.adapt_limit("A", 15, throttled=True, in_flight=13) == 10  # never back up on a 429
    ups = 0
    while store.effective_limit("A", 15) < 11:  # at once at the level that worked: probing, slowly
        store.adapt_limit("A", 15, throttled=False)
        ups += 1
    assert 70 < ups < 90
    assert store.adapt_limit("A", 15, throttled=True, in_flight=11) == 10  # the probe refused
    again = 0
    while store.effective_limit("A", 15) < 11:  # refused once at 11: the next probe comes half as often
        store.adapt_limit("A", 15, throttled=False)
        again += 1
    assert 1.8 * ups < again < 2.2 * ups
    # the other client left: the limit climbs past the level refused and probes at the first pace again
    while store.effective_limit("A", 15) < 12:
        store.adapt_limit("A", 15, throttled=False)
    assert store.r.hget(store.account_key("A", "limit"), "probes") == b"0"


def test_a_cut_request_is_counted_and_a_429_after_it_still_lowers_the_limit(store: Store) -> None:
    # its token is kept, so it is in the n of every send meanwhile: a 429 then is another client's doing
    store.note_cut_request("A", 15)
    assert store.effective_limit("A", 15) == 15
    assert store.adapt_limit("A", 15, throttled=True, in_flight=4) == 3
    assert store.r.hget(store.account_key("A", "limit"), "cut_requests") == b"1"
    assert store.r.pttl(store.account_key("A", "limit")) > 0


def test_a_request_cut_by_the_client_keeps_its_token_until_its_lease_ends(
    redis_url: str, store: Store
) -> None:
    # CleverTap answers in 1.5 s; the client gives up after 0.5: the request may still be counted there
    with Emulator({ACC: PASS}, Faults(latency_ms=1500)) as emu:
        settings = emulator_settings(
            redis_url, emu.url, CLEVERTAP_READ_TIMEOUT="0.5", CLEVERTAP_CONNECT_TIMEOUT="0.5",
            CLEVERTAP_TOKEN_LEASE="3", CLEVERTAP_BATCH_SIZE="3",
        )  # fmt: skip
        d = Deliverer(settings, store, Dispatched())
        Ingestor(store, settings.integration("default")).ingest(events(3))
        d.assemble()
        (message,) = d.dispatch.take()  # type: ignore[attr-defined]
        assert run_message(d, message).result == "retry"
        assert store.tokens_in_flight(ACC) == 1  # kept: its lease has about 2.5 s to go
        assert store.r.hget(store.account_key(ACC, "limit"), "cut_requests") == b"1"
        time.sleep(2.7)
        assert store.tokens_in_flight(ACC) == 0
