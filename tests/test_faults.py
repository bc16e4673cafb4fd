"""Eight faults, each with real processes (redis-server with AOF, the emulator over HTTP, celery workers and
beat), each ending with exact accounting of traced events: delivered, dead-lettered with a reason, or
filtered / rejected at mapping with a reason; none missing, repeats counted, never more than the limit in
flight. Sized to keep the suite short; ``clevertap-pipeline soak`` runs them mixed, at a million events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from pipeline.local.faults import FaultRun
from pipeline.local.procs import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Callable[..., FaultRun]]:
    made: list[FaultRun] = []

    def make(*flags: str, **settings: str) -> FaultRun:
        run = FaultRun(tmp_path / f"run{len(made)}", *flags, **settings)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


def finished(run: FaultRun, timeout_s: float = 120) -> str:
    """Wait until nothing is queued, open or held; return the accounting (asserted exact)."""
    assert run.wait_drained(timeout_s), run.logs()
    a = run.account()
    print(a.summary())  # shown with -s, and on failure
    assert a.ok, a.summary() + "\n" + run.logs()
    return a.summary()


def test_1_three_workers_sigkilled_mid_send_lose_nothing(runs: Callable[..., FaultRun]) -> None:
    run = runs("--latency-ms", "600", "--jitter-ms", "300")
    run.ingest(3000)
    victim = run.worker()
    run.beat()
    for _ in range(3):
        assert run.wait_for_sends(), run.logs()
        victim.kill()  # SIGKILL, requests in flight: tokens and batch leases left behind
        victim = run.worker()
    finished(run)
    assert run.store.stats("default").get("swept", 0) > 0  # the killed workers' batches were found again


def test_2_redis_killed_and_restarted_mid_run_loses_nothing(runs: Callable[..., FaultRun]) -> None:
    run = runs("--latency-ms", "300")  # appendfsync always (FaultRun's default)
    run.ingest(3000)
    for _ in range(3):  # 24 threads for the account's 15 tokens: some wait with messages unacked
        run.worker()
    run.beat()
    assert run.wait_for_sends(), run.logs()
    assert run.stack.redis is not None
    run.stack.redis.kill()  # SIGKILL: what survives is the AOF
    time.sleep(2)
    run.stack.redis.start()  # same port, same directory: workers and beat reconnect
    run.ingest(1000)  # and ingest works again
    # No worker may exit: kombu 5.7 made one that held unacked messages exit on a broker restart
    # (tasks/kombu_patch.py); a worker that exits fails the run here (wait_drained checks every process).
    summary = finished(run, 150)
    # Every answer CleverTap gave was recorded through the outage, so no batch went twice: duplicates come
    # only from requests whose answer never arrived, and this emulator answers every one.
    assert run.account().duplicates == 0, summary


def test_3_an_api_outage_of_ten_seconds_then_back(runs: Callable[..., FaultRun]) -> None:
    run = runs("--outage", "0:10", "--latency-ms", "50")
    run.ingest(2000)
    run.worker()
    run.beat()
    finished(run, 150)
    assert run.store.stats("default")["retries_failures"] > 0  # it was down, and waited


def test_4_a_429_storm(runs: Callable[..., FaultRun]) -> None:
    run = runs("--throttle-rate", "0.9", "--retry-after", "0.2", "--latency-ms", "50")
    run.ingest(2000)
    run.worker(concurrency=16)
    run.beat()
    time.sleep(8)  # nine answers in ten are 429s for eight seconds, then the storm passes
    requests.post(run.emulator_url + "/_emulator/faults", json={"throttle_rate": 0}, timeout=5)
    finished(run)
    assert run.store.stats("default")["retries_throttles"] > 10


def test_5_connections_cut_after_the_server_stored_the_records(runs: Callable[..., FaultRun]) -> None:
    run = runs("--cut-rate", "0.25", "--latency-ms", "50", "--seed", "5")
    run.ingest(2000)
    run.worker()
    run.beat()
    finished(run)
    a = run.account()
    assert a.duplicates > 0  # stored, never heard of: sent again (at least once), counted and reported


def test_6_a_wrong_passcode_then_fixed(runs: Callable[..., FaultRun]) -> None:
    run = runs("--latency-ms", "50")
    run.ingest(1500)
    wrong = run.worker(CLEVERTAP_PASSCODE="not-the-passcode")
    run.beat()
    assert wait_for(lambda: run.depth()["held_batches"] > 0, 60, group=run.stack.group), run.logs()
    assert run.store.dead_letter_count("default") == run.ingested.rejected  # nothing dead-lettered by auth
    wrong.stop()
    run.worker()  # redeployed with the right passcode
    finished(run)
    assert run.account().dead_lettered == 0


def test_7_two_beats_at_once(runs: Callable[..., FaultRun]) -> None:
    run = runs("--latency-ms", "100")
    run.ingest(3000)
    run.worker()
    run.worker()
    run.beat()
    run.beat()  # a mistake: two schedulers, each assembling and sweeping
    finished(run)
    assert run.account().duplicates == 0  # no faults, so no repeat: one live message a batch


def test_8_a_worker_killed_holding_the_assembly_lock(runs: Callable[..., FaultRun]) -> None:
    run = runs("--latency-ms", "20", CLEVERTAP_BATCH_SIZE="20", CLEVERTAP_FLUSH_INTERVAL="0.05")
    lock = f"{run.settings.key_prefix}:assemble:lock"
    spy = redis.Redis.from_url(run.stack.redis_url)
    run.beat()
    caught = False
    try:
        for _ in range(5):  # the lock is held for about a second per backlog: catch a worker holding it
            run.ingest(20_000)  # 1,000 batches to cut
            victim = run.worker()
            assert wait_for(lambda: spy.exists(lock) == 1, 60, 0.0005), run.logs()
            victim.kill()
            if spy.exists(lock) == 1:  # left behind by the dead assembler, with its TTL
                caught = True
                break
    finally:
        spy.close()
    assert caught, "never caught a worker holding the lock"
    run.worker(concurrency=16)
    finished(run, 240)
