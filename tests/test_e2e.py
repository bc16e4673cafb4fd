"""End to end: real `celery worker` and `celery beat` processes, a real Redis, the emulator over HTTP.

Workers are killed for real (SIGKILL) where crash safety is the point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.ingest import ingest
from pipeline.local.procs import wait_for, worker_command
from pipeline.local.runner import Stack, start_stack
from pipeline.local.sample import generate
from pipeline.store import Store
from tests.helpers import emulator_records, environment

pytestmark = pytest.mark.e2e
ACC, PASS = "E2E-ACC", "e2e-pass"


def emulator_stats(stack: Stack) -> dict[str, Any]:
    assert stack.emulator is not None
    return stack.emulator.stats()


def stored(stack: Stack) -> list[dict[str, Any]]:
    assert stack.emulator is not None
    return emulator_records(stack.emulator.url)


@pytest.fixture
def stacks(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start a stack on the test's Redis: the emulator (with ``flags``), no worker and no beat yet."""
    made: list[Stack] = []

    def make(*flags: str, **env: Any) -> Stack:
        base = environment(
            redis_url,
            process=True,
            CLEVERTAP_ACCOUNT_ID=ACC,
            CLEVERTAP_PASSCODE=PASS,
            CLEVERTAP_CONSENT_CATEGORIES="marketing",
            CLEVERTAP_SWEEP_GRACE="2",
            **env,
        )
        stack = start_stack(
            tmp_path / f"stack{len(made)}", base_env=base, emulator_flags=flags, workers=0, beat=False
        )
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()


def test_every_event_arrives_through_three_workers_despite_429s_and_503s(
    stacks: Callable[..., Stack], store: Store
) -> None:
    stack = stacks(
        "--latency-ms",
        "150",
        "--jitter-ms",
        "100",
        "--throttle-rate",
        "0.2",
        "--error-rate",
        "0.2",
        "--restricted-event",
        "Web Page Viewed",
        "--seed",
        "4",
        CLEVERTAP_BATCH_SIZE="250",
    )
    events = generate(6000, seed=21)
    result = ingest(events, settings=stack.settings, store=store)
    pages = sum(
        1
        for e in events
        if e["type"] == "page" and e["context"]["consent"]["categoryPreferences"]["marketing"]
    )
    assert result.rejected == 0 and result.accepted > 5000
    queued = [orjson.loads(r) for r in store.r.lrange(store.key("default", "pending"), 0, -1)]
    for _ in range(3):  # three worker processes, 24 threads between them: more than the 15 tokens
        stack.add_worker(concurrency=8)
    stack.start_beat()
    expected = len(queued) - pages
    done = wait_for(
        lambda: store.depth("default")["open_batches"] == 0 and store.depth("default")["pending"] == 0,
        150,
        group=stack.group,
    )
    assert done, stack.logs()
    stats = emulator_stats(stack)
    assert stats["records_stored"] == expected, stack.logs()
    by_key = sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in stored(stack))
    wanted = sorted(
        orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in queued if r.get("evtName") != "Web Page Viewed"
    )
    assert by_key == wanted  # every record arrived exactly as mapped, none twice
    assert stats["max_records_per_request"] <= 250
    assert max(stats["peak_in_flight"].values()) <= 15 and stats["concurrency_429"] == 0
    assert stats["injected"]["throttled"] > 0 and stats["injected"]["errors"] > 0  # ... and were retried
    ids = store.dead_letter_ids("default", 0, 100_000)
    letters = [orjson.loads(x) for x in store.dead_letters("default", ids) if x]
    assert len(letters) == pages and {x["code"] for x in letters} == {513}
    assert store.stats("default")["delivered"] == expected
    assert PASS not in stack.logs()
    assert "@example.com" not in stack.logs()  # no record, no email in any log line


def test_a_401_holds_batches_until_the_credentials_are_fixed(
    stacks: Callable[..., Stack], store: Store
) -> None:
    stack = stacks(CLEVERTAP_AUTH_PROBE_INTERVAL="1", CLEVERTAP_BATCH_SIZE="200")
    wrong = stack.add_worker(concurrency=4, CLEVERTAP_PASSCODE="not-the-passcode")
    stack.start_beat()
    result = ingest(generate(1000, seed=3), settings=stack.settings, store=store)
    assert wait_for(lambda: store.depth("default")["held_batches"] > 0, 60, group=stack.group), stack.logs()
    assert "wrong region looks like bad credentials" in store.auth_state("default")["reason"]
    assert emulator_stats(stack)["records_stored"] == 0
    assert store.dead_letter_count("default") == 0
    wrong.stop()
    stack.add_worker(concurrency=4)  # redeployed with the right passcode
    assert wait_for(
        lambda: emulator_stats(stack)["records_stored"] == result.records, 90, group=stack.group
    ), stack.logs()
    assert store.auth_state("default") == {}
    assert wait_for(lambda: store.depth("default")["held_batches"] == 0, 10)


def test_a_worker_killed_mid_request_loses_nothing(stacks: Callable[..., Stack], store: Store) -> None:
    stack = stacks(
        "--latency-ms",
        "1500",
        CLEVERTAP_BATCH_SIZE="100",
        CLEVERTAP_CONNECT_TIMEOUT="1",
        CLEVERTAP_READ_TIMEOUT="3",
        CLEVERTAP_TOKEN_LEASE="5",
    )
    victim = stack.add_worker(concurrency=8)
    stack.start_beat()
    result = ingest(generate(2000, seed=8), settings=stack.settings, store=store)
    queued = [orjson.loads(r) for r in store.r.lrange(store.key("default", "pending"), 0, -1)]
    assert wait_for(
        lambda: sum(emulator_stats(stack)["in_flight"].values()) >= 4, 60, 0.05, group=stack.group
    ), stack.logs()
    victim.kill()  # SIGKILL, mid-request: its tokens and batch leases are left behind
    assert store.tokens_in_flight(ACC) > 0
    stack.add_worker(concurrency=8)
    done = wait_for(
        lambda: store.depth("default")["open_batches"] == 0 and store.depth("default")["pending"] == 0,
        120,
        group=stack.group,
    )
    assert done, stack.logs()
    arrived = {orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in stored(stack)}
    assert {orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in queued} <= arrived  # nothing lost
    assert (
        emulator_stats(stack)["records_stored"] >= result.records
    )  # at least once: in-flight ones may repeat
    assert store.stats("default")["swept"] > 0


def test_the_default_prefork_pool_delivers_too(
    stacks: Callable[..., Stack], store: Store, tmp_path: Path
) -> None:
    stack = stacks(CLEVERTAP_BATCH_SIZE="100")
    stack.add_worker(concurrency=2, pool="prefork", name="prefork")
    stack.start_beat()
    result = ingest(generate(800, seed=12), settings=stack.settings, store=store)
    # CleverTap (here the emulator) stores before it answers; the worker records the outcome after: wait for
    # the pipeline's own count, then check what arrived.
    assert wait_for(
        lambda: store.stats("default").get("delivered") == result.records, 90, group=stack.group
    ), stack.logs()
    assert emulator_stats(stack)["records_stored"] == result.records


def test_a_worker_with_invalid_settings_refuses_to_start_and_says_why(redis_url: str) -> None:
    import subprocess

    env = environment(
        None,
        process=True,
        credentials=False,
        REDIS_URL=redis_url,
        CLEVERTAP_ACCOUNT_ID="A",
        CLEVERTAP_PASSCODE=PASS,
        CLEVERTAP_REGION="eu9",
    )
    out = subprocess.run(worker_command("bad"), env=env, capture_output=True, timeout=60, check=False)
    assert out.returncode == 2
    text = (out.stdout + out.stderr).decode()
    assert "configuration error: CLEVERTAP_REGION: must be one of us1, in1, eu1, sg1, aps3, mec1, sk1" in text
    assert PASS not in text
