"""Forgetting a user with real celery worker and beat processes, the emulator over HTTP and the real Redis
they share (the broker's queues too): every copy gone, the other user's records all delivered, CleverTap's
delete sent once it is back; and a worker SIGKILLed in the middle of a forget, whose request another
worker finishes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from pipeline.forget import Forgetter, State, Who
from pipeline.ingest import ingest
from pipeline.local.procs import wait_for
from pipeline.local.runner import Stack, start_stack
from pipeline.store import Store
from tests.helpers import emulator_records, environment, run_cli
from tests.test_forget import (
    ALICE,
    ALICE_ANON,
    ALICE_ID,
    BOB,
    BOB_ANON,
    BOB_ID,
    _who_events,
    dead_lettered_events,
    holders,
)

pytestmark = pytest.mark.e2e
ACC, PASS = "FGT-E2E", "fgt-e2e-pass"
ALICE_VALUES = [ALICE, ALICE_ID, ALICE_ANON]


def _faults(stack: Stack, **changes: Any) -> None:
    assert stack.emulator is not None
    requests.post(stack.emulator.url + "/_emulator/faults", json=changes, timeout=5).raise_for_status()


def _deleted(stack: Stack) -> list[list[str]]:
    assert stack.emulator is not None
    found = requests.get(stack.emulator.url + "/_emulator/deleted", timeout=5).json()
    return list(found.get(ACC, []))


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    settings = {
        "CLEVERTAP_ACCOUNT_ID": ACC,
        "CLEVERTAP_PASSCODE": PASS,
        "CLEVERTAP_FLUSH_INTERVAL": "0.2",
        "CLEVERTAP_DEBUGGER_SIZE": "100",
        "CLEVERTAP_CONNECT_TIMEOUT": "1",
        "CLEVERTAP_READ_TIMEOUT": "3",
        "CLEVERTAP_TOKEN_LEASE": "6",
        **extra,
    }
    return environment(redis_url, process=True, **settings)  # type: ignore[arg-type]


def test_forget_with_real_workers_leaves_no_copy(redis_url: str, store: Store, tmp_path: Path) -> None:
    env = _env(redis_url, CLEVERTAP_BATCH_SIZE="5", CLEVERTAP_MAX_CONCURRENCY="1")
    stack = start_stack(tmp_path, base_env=env, emulator_flags=("--restricted-event", "Refused Event"))
    try:
        assert stack.emulator is not None
        settings = stack.settings
        # Rows CleverTap refuses (api dead letters, and the debugger's copy of its answer, which echoes
        # them) and events that cannot be mapped (mapping dead letters: the whole event), for both users.
        ingest(dead_lettered_events(), settings=settings, store=store)
        assert wait_for(lambda: store.dead_letter_count("default") == 4, 60, 0.2, stack.group), stack.logs()
        # CleverTap goes down: batches are retried (open), the rest waits (pending).
        _faults(stack, error_rate=1.0)
        ingest(
            _who_events(ALICE, ALICE_ID, ALICE_ANON, 30) + _who_events(BOB, BOB_ID, BOB_ANON, 30),
            settings=settings,
            store=store,
        )

        def retried() -> bool:
            depth = store.depth("default")
            return (
                depth["open_batches"] > 0
                and depth["pending"] > 0
                and store.stats("default").get("retries_failures", 0) > 0
            )

        assert wait_for(retried, 60, 0.2, stack.group), stack.logs()
        before = holders(store.r, ALICE_VALUES)
        assert any(k.endswith(":pending") for k in before) and any(":batch:" in k for k in before), before
        assert any(k.endswith(":dead") for k in before) and any(k.endswith(":ids") for k in before), before
        assert any(k.endswith(":debug") for k in before), before

        done = run_cli("forget", "--identity", ALICE, env=stack.env, timeout=120)
        assert done.returncode == 0, done.stderr
        rid = done.stdout.decode().splitlines()[0].strip()
        # The pipeline holds no copy: no key of any kind (Celery's queues, their messages decoded) but the
        # request's own, which CleverTap still needs.
        assert holders(store.r, ALICE_VALUES, skip=("{forget}:req:",)) == {}
        assert ALICE.encode() not in done.stdout + done.stderr  # the CLI prints counts, never the identities

        _faults(stack, error_rate=0.0)  # CleverTap is back

        def finished() -> bool:
            depth = store.depth("default")
            req = store.request(rid) or {}
            return not depth["pending"] and not depth["open_batches"] and req.get("state") == State.DONE

        assert wait_for(finished, 150, 0.5, stack.group), (store.request(rid), stack.logs())
        stored = emulator_records(stack.emulator.url, ACC)
        text = [orjson.dumps(r).decode() for r in stored]
        assert not [t for t in text if ALICE in t or ALICE_ID in t or ALICE_ANON in t]
        assert (
            len([r for r in stored if r.get("identity") == BOB and r.get("evtName") == "Product Viewed"])
            == 30
        )
        assert ["identity", ALICE] in _deleted(stack)
        # Confirmed: no key at all holds her now (the request keeps digests only).
        assert holders(store.r, ALICE_VALUES) == {}
        status = run_cli("forget", "status", rid, "--json", env=stack.env)
        shown = orjson.loads(status.stdout)
        assert shown["state"] == "done" and shown["counts"]["dead_letters"] == 2 and "who" not in shown
        # A later event for her email is filtered, counted as forgotten.
        res = ingest([{"type": "track", "event": "Late", "userId": "u-late", "messageId": "late-1",
                       "context": {"traits": {"email": ALICE}}}], settings=settings, store=store)  # fmt: skip
        assert res.filtered == 1 and store.stats("default")["forgotten"] >= 1
        # --wait: once CleverTap confirmed (a worker sends it); the listing shows no value
        waited = run_cli(
            "forget", "--user-id", BOB_ID, "--wait", "--timeout", "60", env=stack.env, timeout=90
        )
        assert waited.returncode == 0, waited.stderr
        assert b" done " in waited.stdout and ["identity", BOB_ID] in _deleted(stack)
        listing = run_cli("forget", "status", env=stack.env)
        assert listing.stdout.count(b" done ") == 2
        assert not [v for v in (ALICE, ALICE_ID, BOB, BOB_ID) if v.encode() in listing.stdout]
    finally:
        stack.stop()


def test_a_worker_killed_mid_forget_another_finishes_it(redis_url: str, store: Store, tmp_path: Path) -> None:
    env = _env(
        redis_url,
        CLEVERTAP_BATCH_SIZE="4",
        CLEVERTAP_MAX_CONCURRENCY="1",
        CLEVERTAP_TOKEN_LEASE="5",
        CLEVERTAP_SWEEP_GRACE="2",
    )
    stack = start_stack(tmp_path, base_env=env, emulator_flags=())
    try:
        assert stack.emulator is not None
        settings = stack.settings
        # Slow answers, one batch at a time, each with records of both: whenever the forget comes, a batch
        # with her records is in flight, and the forget waits for its answer.
        _faults(stack, latency_ms=2500)
        theirs = zip(
            _who_events(ALICE, ALICE_ID, ALICE_ANON, 10), _who_events(BOB, BOB_ID, BOB_ANON, 10), strict=True
        )
        ingest([e for pair in theirs for e in pair], settings=settings, store=store)
        assert wait_for(
            lambda: any(store.batch_leased("default", b) for b in store.open_batches("default")), 30, 0.05
        ), stack.logs()
        rid = Forgetter(settings, store).ask(
            Who(identities=(ALICE,))
        )  # the beat's sweep hands it to the worker

        def mid_forget() -> bool:
            req = store.request(rid) or {}
            return store.request_leased(rid) and req.get("state") == State.PURGING

        assert wait_for(mid_forget, 30, 0.02, stack.group), stack.logs()
        time.sleep(0.3)  # waiting on the batch in flight, or past it
        stack.workers[0].kill()  # SIGKILL
        assert (store.request(rid) or {}).get("state") == State.PURGING  # it did not get to finish
        _faults(stack, latency_ms=0)
        stack.add_worker()
        # The killed worker's lease on the request ends; the sweep hands it to the new worker.
        assert wait_for(
            lambda: (store.request(rid) or {}).get("state") == State.DONE, 120, 0.5, stack.group
        ), (
            store.request(rid),
            stack.logs(),
        )
        assert ["identity", ALICE] in _deleted(stack)
        assert holders(store.r, ALICE_VALUES) == {}
        # what the killed worker had removed is still counted (each removal once, whoever made it)
        assert sum((store.request(rid) or {})["counts"].values()) >= 1
        assert wait_for(lambda: not store.depth("default")["open_batches"], 60, 0.5, stack.group)
        bob = [r for r in emulator_records(stack.emulator.url, ACC) if r.get("identity") == BOB]
        assert len([r for r in bob if r.get("evtName") == "Product Viewed"]) >= 10
    finally:
        stack.stop()
