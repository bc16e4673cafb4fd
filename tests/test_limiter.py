"""The in-flight limit: never exceeded by threads or processes; a SIGKILLed holder frees its slot when its
lease ends. The algorithm runs against both backends; process and crash tests use the real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.limiter import Limiter, MemoryTokens, RedisTokens, TokenBackend
from pipeline.store import Store
from tests.helpers import ROOT


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, store: Store) -> Iterator[TokenBackend]:
    yield MemoryTokens() if request.param == "memory" else RedisTokens(store)


def test_many_threads_never_exceed_the_limit(backend: TokenBackend) -> None:
    limiter = Limiter(backend)
    lock = threading.Lock()
    holding, peak, done = 0, 0, 0

    def worker() -> None:
        nonlocal holding, peak, done
        for _ in range(15):
            with limiter.token("ACC", 5, lease_s=30, wait_s=5) as got:
                if not got:
                    continue
                with lock:
                    holding += 1
                    peak = max(peak, holding)
                time.sleep(0.002)
                with lock:
                    holding -= 1
                    done += 1

    threads = [threading.Thread(target=worker) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 5  # reached, never passed
    assert done == 24 * 15


def test_the_token_is_released_when_the_body_raises(backend: TokenBackend) -> None:
    limiter = Limiter(backend)
    with pytest.raises(RuntimeError), limiter.token("ACC", 1, 30) as got:
        assert got
        raise RuntimeError("boom")
    with limiter.token("ACC", 1, 30, wait_s=0) as again:
        assert again


def test_waiting_gives_up_after_wait_s_without_releasing_what_it_never_held(backend: TokenBackend) -> None:
    limiter = Limiter(backend)
    with limiter.token("ACC", 1, 30) as first:
        assert first
        started = time.monotonic()
        with limiter.token("ACC", 1, 30, wait_s=0.2) as second:
            assert not second
        assert time.monotonic() - started < 2
        # The holder still holds: the failed waiter released nothing.
        taken, wait_ms = backend.acquire("ACC", 1, 30, "probe")
        assert not taken and wait_ms == pytest.approx(30_000, abs=2_000)


def test_accounts_have_separate_limits(backend: TokenBackend) -> None:
    assert backend.acquire("A", 1, 30, "t1")[0]
    assert backend.acquire("B", 1, 30, "t2")[0]
    assert not backend.acquire("A", 1, 30, "t3")[0]


def test_an_expired_lease_stops_counting(backend: TokenBackend) -> None:
    assert backend.acquire("ACC", 1, 0.2, "old")[0]
    assert not backend.acquire("ACC", 1, 0.2, "new")[0]
    time.sleep(0.3)
    assert backend.acquire("ACC", 1, 0.2, "new")[0]
    assert not backend.release("ACC", "old", 1)  # expired: nothing to release


HOLDER = """
import sys, time
from pipeline.store import Store
store = Store.from_url(sys.argv[1])
ok, n = store.acquire_token("ACC", int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
print("held" if ok else "full", flush=True)
time.sleep(600)
"""

HAMMER = """
import sys, time, random
import redis
from pipeline.limiter import Limiter, RedisTokens
from pipeline.store import Store
store = Store.from_url(sys.argv[1]); r = redis.Redis.from_url(sys.argv[1])
PEAK = ("if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or 0) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end")
limiter = Limiter(RedisTokens(store))
import threading
def work():
    for _ in range(12):
        with limiter.token("ACC", 4, 30, wait_s=10) as got:
            if got:
                now = r.incr("holding")
                r.execute_command("EVAL", PEAK, 1, "peak", now)
                time.sleep(random.uniform(0.001, 0.004))
                r.decr("holding")
                r.incr("done")
ts = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in ts]; [t.join() for t in ts]
"""


def test_several_processes_never_exceed_the_limit(redis_url: str, store: Store) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, redis_url], cwd=ROOT) for _ in range(3)]
    for p in procs:
        assert p.wait(120) == 0
    assert int(store.r.get("done") or 0) == 3 * 6 * 12
    assert int(store.r.get("peak") or 0) == 4
    assert store.peak_in_flight("ACC") == 4


def _holder(redis_url: str, limit: int, lease_s: float, token: str) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, str(limit), str(lease_s), token],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_sigkilled_holder_frees_its_slot_when_the_lease_ends(redis_url: str, store: Store) -> None:
    proc = _holder(redis_url, 1, 2.0, "doomed")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # Dead, but its lease still counts: nobody else can tell a slow request from a dead worker.
        assert store.tokens_in_flight("ACC") == 1
        assert not store.acquire_token("ACC", 1, 2.0, "next")[0]
        deadline = time.monotonic() + 10
        while not store.acquire_token("ACC", 1, 2.0, "next")[0]:
            assert time.monotonic() < deadline, "the dead holder's lease never ended"
            time.sleep(0.1)
        assert store.tokens_in_flight("ACC") == 1  # only "next"
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
