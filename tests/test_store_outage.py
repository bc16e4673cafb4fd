"""A store outage around a send, against a real redis-server SIGKILLed and restarted from its AOF (fsync
always, as production should run it), for longer than redis-py's own retries last (about 5 s).

Once CleverTap has answered, the outcome is recorded when the store is back, so the batch is never sent a
second time; a batch leased but not sent when the store went away is given back as soon as it returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.config import load_settings
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator
from pipeline.local.redis_server import EmbeddedRedis
from pipeline.policy import RetryKind
from pipeline.store import Store
from tests.helpers import ACC, PASS, deliver_through, emulator_records, environment, events, run_message

#: Longer than redis-py's default retries (10, backing off to 1 s): the outage reaches the pipeline.
DOWN_S = 7.0


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=True, appendfsync="always") as s:
        yield s


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator({ACC: PASS}, seed=3) as e:
        yield e


def _outage(server: EmbeddedRedis) -> threading.Thread:
    """SIGKILL Redis now and start it again from its AOF after DOWN_S, in the background."""
    server.kill()

    def back() -> None:
        time.sleep(DOWN_S)
        server.start()

    thread = threading.Thread(target=back, daemon=True)
    thread.start()
    return thread


def test_an_answer_that_arrives_while_the_store_is_down_is_recorded_once_it_is_back(
    server: EmbeddedRedis, emu: Emulator
) -> None:
    store = Store.from_url(server.url)
    d = deliver_through(emu.url, server.url, store, events(5), send=False)
    (message,) = d.dispatched.take()
    deliverer = d.deliverer
    upload = deliverer.client.upload
    restarts: list[threading.Thread] = []

    def answered_then_store_dies(config: Any, body: bytes) -> Any:
        attempt = upload(config, body)  # CleverTap has the records
        restarts.append(_outage(server))
        return attempt

    deliverer.client.upload = answered_then_store_dies  # type: ignore[method-assign]
    report = run_message(deliverer, message)
    restarts[0].join()
    assert report.result == "delivered", report.summary
    assert len(emulator_records(emu.url)) == 5
    # Recorded: nothing left to send, no lease, no token, and the sweep finds nothing to send again.
    depth = store.depth("default")
    assert depth["open_batches"] == 0 and depth["pending"] == 0
    assert store.r.keys(store.key("default", "lease:*")) == []
    assert store.r.zcard(store.account_key(ACC, "tokens")) == 0
    assert deliverer.sweep()["default"]["redispatched"] == 0
    assert int(store.r.hget(store.key("default", "stats"), "delivered") or 0) == 5
    deliverer.client.upload = upload  # type: ignore[method-assign]
    assert d.dispatched.take() == []


def test_a_batch_leased_but_not_sent_when_the_store_went_away_is_given_back_once_it_returns(
    server: EmbeddedRedis, emu: Emulator
) -> None:
    store = Store.from_url(server.url)
    d = deliver_through(emu.url, server.url, store, events(4), send=False)
    (message,) = d.dispatched.take()
    real = store.batch_records
    restarts: list[threading.Thread] = []

    def store_dies(integration: str, bid: str) -> list[bytes]:
        restarts.append(_outage(server))
        return real(integration, bid)

    store.batch_records = store_dies  # type: ignore[method-assign]
    report = run_message(d.deliverer, message)
    restarts[0].join()
    store.batch_records = real  # type: ignore[method-assign]
    assert report.result == "retry" and "before the send" in report.detail
    assert emulator_records(emu.url) == []
    # Given back at once: not leased, the account's slot free, and a message out for it now, not after
    # the batch's lease (three minutes) and the sweep.
    assert store.r.keys(store.key("default", "lease:*")) == []
    assert store.r.zcard(store.account_key(ACC, "tokens")) == 0
    (again,) = d.dispatched.take()
    assert again[2] == 0.0
    assert run_message(d.deliverer, again).result == "delivered"
    assert len(emulator_records(emu.url)) == 4


# redis-py (plain and cluster) sends a command again after a timeout or a dropped connection, though the
# first may have run: each script that records a send's outcome is a no-op the second time.


def _leased(store: Store, emu: Emulator, redis_url: str, n: int = 4) -> tuple[str, str]:
    d = deliver_through(emu.url, redis_url, store, events(n), send=False)
    (_, bid, _, generation) = d.dispatched.take()[0]
    first = store.lease("default", bid, "worker-1", 60, generation)
    assert first.status == "ok"
    # the same call again (its answer was lost): still this owner's lease, another owner's is refused
    assert store.lease("default", bid, "worker-1", 60, generation).status == "ok"
    assert store.lease("default", bid, "worker-2", 60, generation).status == "leased"
    return bid, "worker-1"


def test_a_retry_recorded_twice_counts_once_and_answers_the_same_generation(
    store: Store, emu: Emulator, redis_url: str
) -> None:
    bid, owner = _leased(store, emu, redis_url)
    gen = store.retry_later("default", bid, owner, 5, RetryKind.FAILURES, "HTTP 503")
    assert gen > 0
    assert store.retry_later("default", bid, owner, 5, RetryKind.FAILURES, "HTTP 503") == gen
    meta = store.r.hgetall(store.key("default", f"meta:{bid}"))
    assert meta[b"attempts"] == b"1" and int(meta[b"gen"]) == gen
    assert store.r.hget(store.key("default", "stats"), "retries_failures") == b"1"


def test_a_hold_recorded_twice_counts_once(store: Store, emu: Emulator, redis_url: str) -> None:
    bid, owner = _leased(store, emu, redis_url)
    assert store.hold("default", bid, owner, "HTTP 401", 30)
    assert store.hold("default", bid, owner, "HTTP 401", 30)
    assert store.r.hget(store.key("default", f"meta:{bid}"), "attempts") == b"1"
    assert store.r.hget(store.key("default", "stats"), "auth_failures") == b"1"


def test_a_split_recorded_twice_answers_the_same_halves(store: Store, emu: Emulator, redis_url: str) -> None:
    bid, owner = _leased(store, emu, redis_url)
    halves = store.split("default", bid, owner)
    assert halves == [f"{bid}a", f"{bid}b"]
    assert store.split("default", bid, owner) == halves
    assert store.r.hget(store.key("default", "stats"), "batches_split") == b"1"


def test_a_finish_recorded_twice_counts_once_and_says_so_both_times(
    store: Store, emu: Emulator, redis_url: str
) -> None:
    bid, owner = _leased(store, emu, redis_url)
    assert store.finish("default", bid, owner, 4, [], {"batches_sent": 1}, True)[0]
    assert store.finish("default", bid, owner, 4, [], {"batches_sent": 1}, True)[0]  # this owner's, again
    assert not store.finish("default", bid, "another-send", 4, [], {"batches_sent": 1}, True)[0]
    stats = store.r.hgetall(store.key("default", "stats"))
    assert stats[b"delivered"] == b"4" and stats[b"batches_sent"] == b"1"


def test_an_enqueue_sent_twice_queues_its_events_once(
    store: Store, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The very same EVALSHA again, as redis-py sends it after a timeout: events without a messageId too."""
    sent: list[tuple[Any, ...]] = []
    execute: Any = store.r.execute_command

    def twice(*args: Any, **kwargs: Any) -> Any:
        first = execute(*args, **kwargs)
        if args[0] == "EVALSHA":
            sent.append(args)
            return execute(*args, **kwargs)  # the repeat's answer is the one the caller sees
        return first

    monkeypatch.setattr(store.r, "execute_command", twice)
    no_ids = [{k: v for k, v in e.items() if k != "messageId"} for e in events(3)]
    result = ingest(no_ids, settings=load_settings(environment(redis_url)), store=store)
    assert sent and result.accepted == 3
    assert store.depth("default")["pending"] == 3


def test_a_token_acquired_twice_is_one_token(store: Store) -> None:
    """The last free slot taken by a call sent twice: the repeat still holds it (no NO_TOKEN, no leak)."""
    assert store.acquire_token("ACC-T", 1, 30, "t1")[0]
    assert store.acquire_token("ACC-T", 1, 30, "t1")[0]
    assert not store.acquire_token("ACC-T", 1, 30, "t2")[0]
    assert store.r.zcard(store.account_key("ACC-T", "tokens")) == 1


def test_an_async_enqueue_whose_answer_is_lost_is_sent_again_and_queued_once(
    store: Store, redis_url: str
) -> None:
    """The connection drops after the script ran, before its answer is read: sent once more on a new
    connection, the same call answers what the first did (events without a messageId too)."""
    import asyncio

    import redis
    import redis.asyncio

    from pipeline.ingest import Ingestor

    ingestor = Ingestor(store, load_settings(environment(redis_url)).integration("default"))
    no_ids = [{k: v for k, v in e.items() if k != "messageId"} for e in events(3)]

    async def run() -> Any:
        client = redis.asyncio.Redis.from_url(redis_url)
        pool: Any = client.connection_pool
        take: Any = pool.get_connection
        lost: list[int] = []

        async def dropping() -> Any:
            conn: Any = await take()
            if not hasattr(conn, "sent_script"):
                send, read = conn.send_packed_command, conn.read_response

                async def sending(command: Any, *args: Any, **kwargs: Any) -> Any:
                    packed = command if isinstance(command, bytes) else b"".join(command)
                    conn.sent_script = b"EVALSHA" in packed[:20]
                    return await send(command, *args, **kwargs)

                async def reset(*args: Any, **kwargs: Any) -> Any:
                    answer = await read(*args, **kwargs)
                    if lost or not conn.sent_script:  # the enqueue's first answer only
                        return answer
                    lost.append(1)  # the script ran; its answer never arrives
                    raise redis.ConnectionError("connection reset")

                conn.sent_script = False
                conn.send_packed_command = sending
                conn.read_response = reset
            return conn

        pool.get_connection = dropping
        try:
            return await ingestor.ingest_chunk_async(list(enumerate(no_ids)), client), lost
        finally:
            await client.aclose()

    result, lost = asyncio.run(run())
    assert lost == [1] and result.accepted == 3
    assert store.depth("default")["pending"] == 3
