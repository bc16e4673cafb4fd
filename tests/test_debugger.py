"""The event debugger: the last send attempts of each integration, with CleverTap's raw answer, written in
the same atomic step as the outcome, bounded in count and in age, never holding the passcode."""

from __future__ import annotations

import time

import orjson
import requests

from pipeline.local.emulator import Emulator, Faults
from pipeline.store import Store
from tests.helpers import ACC, PASS, deliver_through, environment, events, page_events, run_cli


def test_each_attempt_is_kept_with_its_raw_answer(redis_url: str, store: Store) -> None:
    with Emulator(
        {ACC: PASS}, Faults(throttle_rate=1.0, restricted_events=frozenset({"webpageviewed"}))
    ) as emu:
        d = deliver_through(emu.url, redis_url, store, events(2) + page_events(1), send=False)
        (message,) = d.dispatched.take()
        d.deliverer.send(message[0], message[1], message[3])  # a 429
        requests.post(emu.url + "/_emulator/faults", json={"throttle_rate": 0}, timeout=5)
        d.drain()  # then a partial: the page view is refused
    newest, oldest = store.debug_entries("default")
    assert (oldest["result"], oldest["http_status"], oldest["attempt"]) == ("retry", 429, 1)
    assert (newest["result"], newest["http_status"], newest["attempt"]) == ("partial", 200, 2)
    assert newest["batch_id"] == oldest["batch_id"] == message[1] and newest["records"] == 3
    answer = orjson.loads(newest["body"])  # CleverTap's answer, as it came
    assert answer["status"] == "partial" and answer["unprocessed"][0]["code"] == 513
    assert PASS not in orjson.dumps(store.debug_entries("default")).decode()


def test_the_debugger_is_bounded_in_count_and_age(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}) as emu:
        d = deliver_through(
            emu.url, redis_url, store, events(50), CLEVERTAP_BATCH_SIZE="10", CLEVERTAP_DEBUGGER_SIZE="3",
            CLEVERTAP_DEAD_LETTER_MAX_AGE="1",
        )  # fmt: skip
    assert len(store.debug_entries("default")) == 3  # five batches sent, the newest three kept
    time.sleep(1.1)
    d.deliverer.sweep()  # raw answers can echo records: kept no longer than dead letters
    assert store.debug_entries("default") == []


def test_the_cli_lists_and_shows_attempts(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(restricted_events=frozenset({"webpageviewed"}))) as emu:
        d = deliver_through(emu.url, redis_url, store, events(2) + page_events(1))
    env = environment(None, process=True, credentials=False, **d.env)
    listed = run_cli("debugger", "--failed", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (entry,) = [orjson.loads(x) for x in listed.stdout.splitlines()]
    assert entry["result"] == "partial"
    shown = run_cli("debugger", "show", entry["batch_id"], env=env)
    assert shown.returncode == 0 and b'"code": 513' in shown.stdout
    text = run_cli("debugger", env=env)
    assert b"partial" in text.stdout and b"HTTP 200" in text.stdout
    assert run_cli("debugger", "show", "no-such-batch", env=env).returncode == 1
    assert PASS.encode() not in listed.stdout + shown.stdout + text.stdout


def test_status_answers_am_i_keeping_up_in_one_documented_shape(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(restricted_events=frozenset({"webpageviewed"}))) as emu:
        d = deliver_through(emu.url, redis_url, store, events(2) + page_events(1))
        from pipeline.ingest import Ingestor

        Ingestor(store, d.settings.integration("default")).ingest(events(3, start=100))
        time.sleep(0.3)
    env = environment(None, process=True, credentials=False, **d.env)
    out = run_cli("status", "--json", env=env)
    s = orjson.loads(out.stdout)["integrations"]["default"]
    assert (s["pending"], s["delivered"], s["dead_lettered"], s["held"], s["auth_ok"]) == (3, 2, 1, 0, True)
    assert 0.2 <= s["oldest_pending_age_s"] < 30 and s["open_batches"] == 0
    assert (s["limit"], s["effective_limit"], s["in_flight"]) == (15, 15, 0)
    assert s["last_error"]["batch"] and "partial" in s["last_error"]["reason"]
    assert {"filtered", "duplicates", "retries", "throttled"} <= set(s)
    text = run_cli("status", env=env).stdout.decode()
    assert "oldest record waiting" in text and "last error" in text
