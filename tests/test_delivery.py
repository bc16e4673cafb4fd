"""Delivery against a real Redis and the emulator over HTTP, with a recording dispatch instead of Celery."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import responses

from pipeline.config import Settings, load_settings
from pipeline.delivery import Deliverer
from pipeline.errors import UnknownIntegration
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator, Faults
from pipeline.store import Store
from tests.helpers import (
    ACC,
    PASS,
    Dispatched,
    dead_letters,
    deliver_through,
    drain,
    emulator_records,
    emulator_settings,
    environment,
    events,
    page_events,
    run_message,
)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator({ACC: PASS}, seed=2) as server:
        yield server


def make(redis_url: str, emu: Emulator, **extra: Any) -> Settings:
    return emulator_settings(redis_url, emu.url, **extra)


def stored(emu: Emulator) -> list[dict[str, Any]]:
    return emulator_records(emu.url)


def with_batches(
    redis_url: str, emu: Emulator, store: Store, n: int = 3, **extra: str
) -> tuple[Deliverer, Dispatched, Settings]:
    """Settings against ``emu``, ``n`` events ingested and assembled into batches (dispatched, not sent)."""
    d = deliver_through(emu.url, redis_url, store, events(n), send=False, **extra)
    return d.deliverer, d.dispatched, d.settings


def test_full_batches_go_at_once_and_a_partial_one_after_the_flush_interval(
    redis_url: str, emu: Emulator, store: Store
) -> None:
    settings = make(redis_url, emu, CLEVERTAP_BATCH_SIZE="10", CLEVERTAP_FLUSH_INTERVAL="1")
    dispatched = Dispatched()
    d = Deliverer(settings, store, dispatched)
    ingest(events(25), settings=settings, store=store)
    assert d.assemble() == {"default": 2}
    assert store.r.llen(store.key("default", "pending")) == 5
    assert d.assemble() == {}
    time.sleep(1.05)
    assert d.assemble() == {"default": 1}
    sizes = [len(store.batch_records("default", b)) for _, b, _, _ in dispatched]
    assert sizes == [10, 10, 5]
    assert store.ready_integrations() == set()


def test_a_backlog_is_cut_as_it_can_be_sent_and_drains_as_sends_finish(
    redis_url: str, emu: Emulator, store: Store
) -> None:
    settings = make(redis_url, emu, CLEVERTAP_BATCH_SIZE="10", CLEVERTAP_FLUSH_INTERVAL="60")
    dispatched = Dispatched()
    d = Deliverer(settings, store, dispatched)
    ingest(events(455), settings=settings, store=store)
    # Bounded dispatch: twice the account's limit of batches open; the rest waits as records in Redis.
    assert d.assemble() == {"default": 30} and len(dispatched) == 30
    assert store.r.llen(store.key("default", "pending")) == 155
    assert d.assemble() == {}  # nothing more until sends finish
    # Each finished send cuts the next batch at once: the full ones drain, the last 5 wait their interval.
    reports = drain(d, dispatched)
    assert [str(r.result) for r in reports] == ["delivered"] * 45
    assert store.r.llen(store.key("default", "pending")) == 5 and len(stored(emu)) == 450


def test_delivered_records_are_exactly_those_queued(redis_url: str, emu: Emulator, store: Store) -> None:
    settings = make(redis_url, emu, CLEVERTAP_BATCH_SIZE="100", CLEVERTAP_FLUSH_INTERVAL="0.05")
    dispatched = Dispatched()
    d = Deliverer(settings, store, dispatched)
    ingest(events(250), settings=settings, store=store)
    queued = [orjson.loads(r) for r in store.r.lrange(store.key("default", "pending"), 0, -1)]
    time.sleep(0.06)
    d.assemble()
    reports = drain(d, dispatched)
    assert [r.result for r in reports] == ["delivered"] * 3
    assert stored(emu) == queued
    assert store.stats("default")["delivered"] == 250
    assert store.depth("default") == {"pending": 0, "open_batches": 0, "held_batches": 0, "dead_letters": 0}
    assert store.r.keys(store.key("default", "batch:*")) == []


def test_partial_delivers_accepted_rows_and_dead_letters_each_rejected_row_with_its_code(
    redis_url: str, store: Store
) -> None:
    with Emulator({ACC: PASS}, Faults(restricted_events=frozenset({"webpageviewed"}))) as emu:
        settings = make(redis_url, emu, CLEVERTAP_FLUSH_INTERVAL="0.05")
        dispatched = Dispatched()
        d = Deliverer(settings, store, dispatched)
        mixed = events(3)
        mixed.insert(1, page_events(1)[0])
        ingest(mixed, settings=settings, store=store)
        time.sleep(0.06)
        d.assemble()
        (report,) = drain(d, dispatched)
        assert (report.result, report.delivered, report.dead_lettered, report.codes) == (
            "partial",
            3,
            1,
            {"513": 1},
        )
        assert report.is_error and "513x1" in report.summary and "@" not in report.summary
        assert len(stored(emu)) == 3
    (letter,) = dead_letters(store)
    assert letter["stage"] == "api" and letter["code"] == 513 and letter["row"] == 2
    assert letter["record"]["evtName"] == "Web Page Viewed" and letter["attempts"] == 1
    assert letter["error"].endswith("Skipped record number : 2") and letter["batch_id"] == report.batch_id
    assert PASS not in orjson.dumps(letter).decode()
    assert store.stats("default")["delivered"] == 3


def test_429s_are_retried_with_retry_after_and_then_deliver(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(throttle_rate=1.0, retry_after=1.5)) as emu:
        d, dispatched, _ = with_batches(redis_url, emu, store, 5)
        (first,) = [run_message(d, m) for m in dispatched.take()]
        assert first.result == "retry" and first.delay_s == 1.5
        assert [c for _, _, c, _ in dispatched] == [1.5]
        requests.post(emu.url + "/_emulator/faults", json={"throttle_rate": 0}, timeout=5)
        assert [r.result for r in drain(d, dispatched)] == ["delivered"]
        assert len(stored(emu)) == 5
    assert store.stats("default")["retries_throttles"] == 1


def test_5xx_is_retried_with_backoff_then_given_up_with_the_last_error(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(error_rate=1.0)) as emu:
        d, dispatched, _ = with_batches(redis_url, emu, store, 4, CLEVERTAP_GIVE_UP_AGE="1")
        (first,) = [run_message(d, m) for m in dispatched.take()]
        assert first.result == "retry" and 0 <= first.delay_s <= 1
        time.sleep(1.1)
        (last,) = [run_message(d, m) for m in dispatched.take()]
    assert last.result == "gave_up" and last.dead_lettered == 4
    letters = dead_letters(store)
    assert len(letters) == 4 and all("gave up after 2 failed attempts" in x["error"] for x in letters)
    assert {x["code"] for x in letters} <= {500, 503} and letters[0]["attempts"] == 2


def test_401_holds_the_batch_pauses_the_integration_and_releases_everything_once_a_probe_succeeds(
    redis_url: str, emu: Emulator, store: Store
) -> None:
    wrong = make(
        redis_url,
        emu,
        CLEVERTAP_PASSCODE="wrong",
        CLEVERTAP_BATCH_SIZE="5",
        CLEVERTAP_FLUSH_INTERVAL="0.05",
        CLEVERTAP_AUTH_PROBE_INTERVAL="0.2",
    )
    dispatched = Dispatched()
    bad = Deliverer(wrong, store, dispatched)
    ingest(events(10), settings=wrong, store=store)
    bad.assemble()
    reports = drain(bad, dispatched)
    assert [r.result for r in reports] == ["held", "skipped:held"]  # the second is never even sent
    assert "a wrong region looks like bad credentials" in store.auth_state("default")["reason"]
    assert dead_letters(store) == []
    # While authentication fails, new records stay queued.
    ingest(events(5, start=10), settings=wrong, store=store)
    assert bad.assemble() == {}
    assert store.depth("default")["held_batches"] == 2
    # The probe with the wrong passcode fails again: still held.
    time.sleep(0.25)
    bad.sweep()
    assert [r.result for r in drain(bad, dispatched)] == ["held"]
    # Credentials fixed (a redeploy with the right passcode): the next probe delivers and releases the rest.
    fixed = make(
        redis_url,
        emu,
        CLEVERTAP_BATCH_SIZE="5",
        CLEVERTAP_FLUSH_INTERVAL="0.05",
        CLEVERTAP_AUTH_PROBE_INTERVAL="0.2",
    )
    good = Deliverer(fixed, store, dispatched)
    time.sleep(0.25)
    good.sweep()
    results = [r.result for r in drain(good, dispatched)]
    # The probe, the batch it released, and the records queued meanwhile (cut as soon as a send finished).
    assert results == ["delivered", "delivered", "delivered"]
    assert store.auth_state("default") == {}
    assert good.assemble() == {}
    assert len(stored(emu)) == 15


@responses.activate
def test_a_400_dead_letters_every_row_with_the_request_error(redis_url: str, store: Store) -> None:
    settings = load_settings(
        environment(redis_url, CLEVERTAP_API_URL="http://ct.test", CLEVERTAP_FLUSH_INTERVAL="0.05")
    )
    responses.post(
        "http://ct.test/1/upload",
        status=400,
        json={"status": "fail", "error": "Malformed request", "code": 400},
    )
    dispatched = Dispatched()
    d = Deliverer(settings, store, dispatched)
    ingest(events(3), settings=settings, store=store)
    time.sleep(0.06)
    d.assemble()
    (report,) = drain(d, dispatched)
    assert report.result == "bad_request" and report.dead_lettered == 3
    assert {(x["code"], x["error"]) for x in dead_letters(store)} == {(400, "HTTP 400 Malformed request")}
    sent = responses.calls[0].request
    assert sent.headers["X-CleverTap-Passcode"] == settings.integration("default").passcode.reveal()
    assert sent.headers["Content-Type"] == "application/json; charset=utf-8"
    assert isinstance(sent.body, bytes)
    assert orjson.loads(sent.body)["d"][0]["evtName"] == "Product Viewed"


def test_no_free_token_gives_the_batch_back_with_a_short_countdown(
    redis_url: str, emu: Emulator, store: Store
) -> None:
    d, dispatched, _ = with_batches(redis_url, emu, store, 2, CLEVERTAP_MAX_CONCURRENCY="1")
    assert store.acquire_token(ACC, 1, 30, "someone-else")[0]
    (report,) = [run_message(d, m) for m in dispatched.take()]
    assert report.result == "no_token" and 0.1 <= report.delay_s <= 0.5
    assert len(dispatched) == 1 and store.depth("default")["open_batches"] == 1
    assert store.r.keys(store.key("default", "lease:*")) == []
    store.release_token(ACC, "someone-else")
    assert [r.result for r in drain(d, dispatched)] == ["delivered"]


def test_the_sweep_republishes_batches_whose_message_was_lost(
    redis_url: str, emu: Emulator, store: Store
) -> None:
    d, dispatched, _ = with_batches(redis_url, emu, store, 3, CLEVERTAP_SWEEP_GRACE="1")
    dispatched.take()  # the message is lost
    assert d.sweep()["default"]["redispatched"] == 0  # not overdue yet
    time.sleep(1.1)
    assert d.sweep()["default"]["redispatched"] == 1
    assert [r.result for r in drain(d, dispatched)] == ["delivered"]


def test_a_batch_being_sent_is_neither_swept_nor_sent_twice(
    redis_url: str, emu: Emulator, store: Store
) -> None:
    d, dispatched, _ = with_batches(redis_url, emu, store, 3, CLEVERTAP_SWEEP_GRACE="1")
    (_, bid, _, generation) = dispatched.take()[0]
    assert store.lease("default", bid, "another-worker", 60, generation).status == "ok"
    assert d.send("default", bid, generation).result == "skipped:leased"
    time.sleep(1.1)
    assert d.sweep()["default"]["redispatched"] == 0


def test_a_cut_connection_is_retried_so_nothing_is_lost(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(cut_rate=1.0)) as emu:
        d, dispatched, _ = with_batches(redis_url, emu, store, 3)
        (first,) = [run_message(d, m) for m in dispatched.take()]
        assert first.result == "retry" and "network" in first.detail
        requests.post(emu.url + "/_emulator/faults", json={"cut_rate": 0}, timeout=5)
        assert [r.result for r in drain(d, dispatched)] == ["delivered"]
        # At least once: the cut upload was stored and the retry stored it again (no idempotency key).
        assert len(stored(emu)) == 6


def test_assemble_runs_never_overlap(redis_url: str, emu: Emulator, store: Store) -> None:
    settings = make(redis_url, emu)
    d = Deliverer(settings, store, Dispatched())
    token = store.try_lock("assemble", 30)
    assert token is not None
    assert d.assemble_exclusive() is None
    store.unlock("assemble", token)
    assert d.assemble_exclusive() == {}


def test_a_batch_throttled_past_its_give_up_age_is_dead_lettered(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(throttle_rate=1.0)) as emu:
        d, dispatched, _ = with_batches(redis_url, emu, store, 2, CLEVERTAP_GIVE_UP_AGE="1")
        (first,) = [run_message(d, m) for m in dispatched.take()]
        assert first.result == "retry"
        time.sleep(1.1)
        (last,) = [run_message(d, m) for m in dispatched.take()]
    assert last.result == "gave_up" and last.dead_lettered == 2
    assert all("throttled 2 times" in x["error"] for x in dead_letters(store))


def test_two_integrations_with_two_accounts_deliver_each_to_its_own_account(
    redis_url: str, store: Store, tmp_path: Any
) -> None:
    with Emulator({"ACC-A": "pass-a", "ACC-B": "pass-b"}) as emu:
        path = tmp_path / "two.toml"
        common = f'api_url = "{emu.url}"\nflush_interval = 0.05\n'
        path.write_text(
            f'redis_url = "{redis_url}"\n'
            f'[integrations.a]\naccount_id = "ACC-A"\npasscode = "pass-a"\nregion = "us1"\n{common}'
            f'[integrations.b]\naccount_id = "ACC-B"\npasscode = "pass-b"\nregion = "in1"\n{common}'
            "batch_size = 7\n"
        )
        settings = load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)})
        dispatched = Dispatched()
        d = Deliverer(settings, store, dispatched)
        ingest(events(10), "a", settings=settings, store=store)
        ingest(events(20), "b", settings=settings, store=store)
        time.sleep(0.06)
        assert d.assemble() == {"a": 1, "b": 3}
        assert {r.result for r in drain(d, dispatched)} == {"delivered"}
        stats: dict[str, Any] = requests.get(emu.url + "/_emulator/stats", timeout=5).json()
    assert stats["stored_by_account"] == {"ACC-A": 10, "ACC-B": 20}
    assert store.peak_in_flight("ACC-A") >= 1 and store.peak_in_flight("ACC-B") >= 1


def test_an_unexpected_error_while_sending_is_a_transient_failure_not_a_crash(
    redis_url: str, emu: Emulator, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    d, dispatched, _ = with_batches(redis_url, emu, store, 2)

    def broken(*_: Any) -> Any:
        raise ValueError(f"Invalid header value {PASS!r}")  # as http.client words it

    d.client.upload = broken  # type: ignore[method-assign,assignment]
    (report,) = [run_message(d, m) for m in dispatched.take()]
    assert report.result == "retry" and "internal error: ValueError" in report.detail
    assert store.tokens_in_flight(ACC) == 0  # the token was released all the same
    assert store.depth("default")["open_batches"] == 1 and len(dispatched) == 1
    assert "unexpected ValueError" in caplog.text and PASS not in caplog.text


def test_a_settings_change_gives_a_new_deliverer_and_leaves_the_running_one_as_it_was(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from pipeline import runtime

    first = load_settings(environment(redis_url))
    current = {"settings": first}
    monkeypatch.setattr(runtime, "settings", lambda: current["settings"])
    runtime.reset()
    try:
        before = runtime.deliverer(lambda *a: None)
        assert runtime.deliverer(lambda *a: None) is before  # unchanged settings: the same one
        current["settings"] = dataclasses.replace(first, integrations={})  # the console removed one
        after = runtime.deliverer(lambda *a: None)
        assert after is not before and after.settings is current["settings"]
        assert before.settings is first  # a send still running on it keeps the settings it started with
        assert after.client is before.client and after.limiter is before.limiter  # one HTTP session
    finally:
        runtime.reset()


def test_each_outcome_that_dead_letters_rows_raises_its_own_error() -> None:
    from pipeline.delivery import SendReport, SendResult
    from pipeline.errors import BatchGivenUp, BatchRefused, PartialDelivery

    def error(result: SendResult) -> object:
        return SendReport("default", "b1", result, 10, 5, 5, {"513": 5}).error()

    assert isinstance(error(SendResult.PARTIAL), PartialDelivery)
    assert isinstance(error(SendResult.BAD_REQUEST), BatchRefused)
    assert isinstance(error(SendResult.GAVE_UP), BatchGivenUp)
    assert error(SendResult.DELIVERED) is None and error(SendResult.RETRY) is None
    assert "5 delivered, 5 dead-lettered (513x5)" in str(error(SendResult.PARTIAL))


def test_records_for_an_integration_no_worker_serves_are_flagged_and_warned_of_once_a_minute(
    redis_url: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline import delivery
    from pipeline.status import integration_status, unserved_elsewhere

    # The CLI knew "shop2" (it had the console's key) and queued for it; this worker does not know it.
    knows = load_settings(environment(redis_url, CLEVERTAP_PIPELINE_CONFIG="", CLEVERTAP_ACCOUNT_ID="ACC-S2"))
    shop2 = dataclasses.replace(knows.integration("default"), name="shop2")
    cli_settings = dataclasses.replace(knows, integrations={**knows.integrations, "shop2": shop2})
    ingest(events(3), "shop2", settings=cli_settings, store=store)
    worker = Deliverer(load_settings(environment(redis_url)), store, lambda *a: None)
    delivery._WARNED.clear()
    with caplog.at_level("WARNING", logger="pipeline.delivery"):
        for _ in range(3):  # three assemble ticks
            worker.assemble()
    warned = [r for r in caplog.records if "shop2" in r.getMessage()]
    assert len(warned) == 1 and "CLEVERTAP_CONSOLE_KEY" in warned[0].getMessage()
    assert store.depth("shop2")["pending"] == 3  # waiting, not lost
    # status says so, from a process that knows the integration and from one that does not
    assert integration_status(cli_settings, store, "shop2")["not_served_since"] is not None
    assert unserved_elsewhere(worker.settings, store)["shop2"]["pending"] == 3
    assert integration_status(cli_settings, store, "default")["not_served_since"] is None
    with pytest.raises(UnknownIntegration, match="CLEVERTAP_CONSOLE_KEY set"):
        worker.settings.integration("shop2")
