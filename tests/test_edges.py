"""Edges where records could be sent twice, a batch could loop for ever, or the passcode could leave for
another host. Each test failed on the code before its fix (see the commit that added it)."""

from __future__ import annotations

import random
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson
import pytest
import redis
import requests
import responses

from pipeline.client import UploadClient
from pipeline.deadletters import Filter, dead_letter, iter_dead_letters
from pipeline.delivery import Deliverer
from pipeline.ingest import IngestMessage, Ingestor
from pipeline.local.emulator import Emulator, Faults
from pipeline.policy import Attempt, BatchHistory, Kind, classify, decide, parse_retry_after
from pipeline.replay import replay
from pipeline.store import Enqueue, Store
from tests.helpers import (
    ACC,
    PASS,
    Dispatched,
    dead_letters,
    deliver_through,
    emulator_settings,
    environment,
    events,
    pending,
    run_message,
    serve,
)

ROWS = [
    orjson.dumps({"type": "event", "identity": f"u{i}@x.com", "evtName": "E", "evtData": {}})
    for i in range(5)
]
NOW_MS = 10 * 3_600_000


def history(**over: int) -> BatchHistory:
    return BatchHistory(**{"now_ms": NOW_MS, "created_ms": NOW_MS, "attempts": 0, "failures": 0,
                           "throttles": 0, "first_failure_ms": 0, **over})  # fmt: skip


def stats_of(url: str) -> dict[str, Any]:
    result: dict[str, Any] = requests.get(url + "/_emulator/stats", timeout=5).json()
    return result


# ------------------------------------------------------------------------------- 1. redirects


def test_a_redirect_holds_the_integration_and_the_passcode_never_goes_to_the_new_host(
    redis_url: str, store: Store
) -> None:
    reached: list[dict[str, str]] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reached.append(dict(self.headers))
            body = b'{"status":"success","processed":3,"unprocessed":[]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve(Elsewhere) as elsewhere:

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(307)
                self.send_header("Location", elsewhere + "/1/upload")
                self.send_header("Content-Length", "0")
                self.end_headers()

        with serve(Redirect) as redirecting:
            deliver_through(redirecting, redis_url, store, events(3))
    assert reached == []  # nothing, and above all no X-CleverTap-Passcode, went to the other host
    assert store.depth("default")["held_batches"] == 1 and dead_letters(store) == []
    reason = store.auth_state("default")["reason"]
    assert "redirect" in reason and elsewhere.removeprefix("http://") in reason


# ------------------------------------------------------------------- 2. one live message a batch


def test_a_batch_waiting_in_a_long_queue_keeps_one_live_message(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}) as emu:
        d = deliver_through(
            emu.url,
            redis_url,
            store,
            events(30),
            send=False,
            CLEVERTAP_BATCH_SIZE="10",
            CLEVERTAP_SWEEP_GRACE="1",
        )
        # The three messages wait in a long queue; sweeps come and go meanwhile.
        for _ in range(4):
            time.sleep(1.05)
            d.deliverer.sweep()
        messages = d.dispatched.take()
        # Each re-publish of a batch waits twice as long as the one before: 2 in four sweeps, not 4.
        assert len(messages) == 9
        reports = [run_message(d.deliverer, m) for m in messages]
        assert [str(r.result) for r in reports].count("delivered") == 3
        assert {r.result for r in reports} <= {"delivered", "skipped:stale"}
        assert stats_of(emu.url)["requests"] == 3


def test_a_stale_copy_never_sends_a_batch_during_its_backoff(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(throttle_rate=1.0, retry_after=30)) as emu:
        d = deliver_through(emu.url, redis_url, store, events(3), send=False)
        (first,) = d.dispatched.take()
        assert run_message(d.deliverer, first).result == "retry"  # 429: again in 30 s
        requests.post(emu.url + "/_emulator/faults", json={"throttle_rate": 0}, timeout=5)
        assert run_message(d.deliverer, first).result == "skipped:stale"  # the broker ran it twice
        (live,) = d.dispatched.take()
        early = run_message(d.deliverer, live)  # the live message, run before its time (a clock skew)
        assert early.result == "not_due" and 25 < early.delay_s <= 30
        (again,) = d.dispatched.take()
        assert again[3] == live[3]  # it is still the live message
        assert stats_of(emu.url)["requests"] == 1  # only the first send reached CleverTap


# --------------------------------------------------------------------------- 3. poison responses


def test_a_retry_after_date_without_a_zone_and_a_code_that_is_no_number_do_not_crash() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00") == 0.0  # in the past, read as UTC
    c = classify(
        Attempt(
            200,
            orjson.dumps(
                {
                    "status": "partial",
                    "processed": 4,
                    "unprocessed": [{"code": "²", "error": "x. Skipped record number : 2"}],
                }
            ),
        ),
        ROWS,
    )
    assert c.kind is Kind.REJECTED and c.rejections[0].code is None and c.rejections[0].row == 1


def test_any_failure_after_a_response_counts_and_a_batch_that_keeps_failing_ends_in_dead_letters(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def poison(*_: Any) -> Any:
        raise TypeError("a response nobody foresaw")

    with Emulator({ACC: PASS}) as emu:
        d = deliver_through(emu.url, redis_url, store, events(2), send=False, CLEVERTAP_GIVE_UP_AGE="1")
        monkeypatch.setattr("pipeline.delivery.classify", poison)
        results = []
        for _ in range(20):
            work = d.dispatched.take()
            if not work:
                break
            results += [run_message(d.deliverer, m).result for m in work]
            time.sleep(0.3)
    assert results[0] == "retry" and results[-1] == "gave_up"
    letters = dead_letters(store)
    assert len(letters) == 2 and all("could not be processed" in x["error"] for x in letters)
    assert all(x["attempts"] >= 2 for x in letters) and store.depth("default")["open_batches"] == 0


# ----------------------------------------------------------------------- 4. processed reconciled


def decided(body: dict[str, Any], rows: list[bytes] = ROWS) -> Any:
    return decide(classify(Attempt(200, orjson.dumps(body)), rows), rows, history(), 3600, random.Random(0))


def test_partial_without_details_keeps_every_row_as_an_unconfirmed_dead_letter() -> None:
    d = decided({"status": "partial", "processed": 3, "unprocessed": []})
    assert d.delivered == 0 and len(d.dead) == 5
    assert all(r.unconfirmed and "processed 3 of 5" in r.error for r in d.dead)


def test_fail_listing_fewer_rows_than_were_sent_counts_none_delivered() -> None:
    entry = {"code": 509, "error": "Event Name is incorrect. Skipped record number : 2"}
    d = decided({"status": "fail", "processed": 0, "unprocessed": [entry]})
    assert d.delivered == 0 and len(d.dead) == 5
    assert sorted(r.row for r in d.dead if r.row is not None) == [0, 1, 2, 3, 4]
    assert [r.code for r in d.dead if r.row == 1] == [509]
    assert all("did not list this row" in r.error for r in d.dead if r.row != 1)


def test_two_entries_naming_one_row_count_it_once() -> None:
    entry = {"code": 509, "error": "E. Skipped record number : 2", "record": orjson.loads(ROWS[1])}
    d = decided({"status": "partial", "processed": 4, "unprocessed": [entry, entry]})
    assert (d.delivered, [r.row for r in d.dead]) == (4, [1])
    two = decided({"status": "partial", "processed": 1, "unprocessed": [entry, entry, entry]}, ROWS[:2])
    assert two.delivered == 1 and [r.row for r in two.dead] == [1]
    assert two.delivered + len(two.dead) == 2  # every row once: delivered or dead-lettered, never negative


# ----------------------------------------------------------------- 5. a request outlives no lease


class Trickle(BaseHTTPRequestHandler):
    """Answers one byte every 0.3 s: no single read waits long, the whole answer takes 30 s."""

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        try:
            for byte in head + b" " * 100:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline() -> None:
    settings = emulator_settings("redis://127.0.0.1:1/0", "http://unused", CLEVERTAP_CONNECT_TIMEOUT="0.5",
                                 CLEVERTAP_READ_TIMEOUT="1", CLEVERTAP_TOKEN_LEASE="3")  # fmt: skip
    client = UploadClient(settings.connect_timeout, settings.read_timeout)
    with serve(Trickle) as url:
        config = emulator_settings("redis://127.0.0.1:1/0", url).integration("default")
        started = time.monotonic()
        attempt = client.upload(config, b'{"d":[]}')
        took = time.monotonic() - started
    assert attempt.status is None and attempt.error is not None and "deadline" in attempt.error
    assert took < settings.token_lease  # the token (3 s) outlives the request (1.5 s deadline)


# ------------------------------------------------------------------ 6. ingest resumes, never drops


def test_an_ingest_message_that_failed_midway_resumes_where_it_stopped(
    redis_url: str, store: Store, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_ids = [
        {k: v for k, v in e.items() if k != "messageId"} for e in events(1200)
    ]  # cannot be de-duplicated
    ingestor = Ingestor(store, make_settings().integration("default"))
    real, calls = Store.run, []

    def flaky(self: Store, ask: Any) -> Any:  # the enqueue itself, whichever way ingest sends it
        if not isinstance(ask, Enqueue):
            return real(self, ask)
        calls.append(1)
        if len(calls) == 2:
            raise redis.ConnectionError("a blip")
        return real(self, ask)

    monkeypatch.setattr(Store, "run", flaky)
    message = IngestMessage("task-1", no_ids)
    with pytest.raises(redis.ConnectionError):
        ingestor.ingest_message(message)
    ingestor.ingest_message(message)  # the retry: chunks already queued are not queued again
    assert len(pending(store)) == 1200 and store.stats("default")["accepted"] == 1200


def test_an_event_that_breaks_the_mapper_becomes_a_dead_letter_and_the_rest_go_on(
    store: Store, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor = Ingestor(store, make_settings().integration("default"))
    real = ingestor.mapper.map

    def fragile(event: Any, *args: Any) -> Any:
        if event.user_id == "u1":
            raise KeyError("a bug")
        return real(event, *args)

    monkeypatch.setattr(ingestor.mapper, "map", fragile)
    result = ingestor.ingest(events(3))
    assert (result.accepted, result.rejected) == (2, 1)
    (letter,) = dead_letters(store)
    assert letter["stage"] == "mapping" and "internal error" in letter["reasons"][0]
    assert letter["event"]["userId"] == "u1"


# -------------------------------------------------------------------------- 7. concurrent replays


def test_two_replays_of_one_mapping_dead_letter_queue_it_once(
    redis_url: str, store: Store, make_settings: Any
) -> None:
    strict = make_settings(CLEVERTAP_NESTED="reject")
    no_id = {k: v for k, v in events(1, dims={"w": 1})[0].items() if k != "messageId"}  # no de-duplication
    Ingestor(store, strict.integration("default")).ingest([no_id])
    (entry,) = iter_dead_letters(store, Filter("default"))
    lenient = Ingestor(store, make_settings().integration("default"))
    # Both replays read the dead letter before either queued it.
    first = lenient.ingest_chunk([(0, entry["event"])], replaces=[entry["id"]])
    second = lenient.ingest_chunk([(0, entry["event"])], replaces=[entry["id"]])
    assert (first.records, second.records) == (1, 0)
    assert len(pending(store)) == 1 and store.dead_letter_count("default") == 0


# ------------------------------------------------------------------------------- 8. other 4xx


@pytest.mark.parametrize("status", [404, 407])
@responses.activate
def test_a_wrong_url_or_a_proxy_asking_for_auth_holds_instead_of_dead_lettering(
    status: int, redis_url: str, store: Store
) -> None:
    responses.add(responses.POST, "http://ct.test/1/upload", status=status, body=b"")
    deliver_through("http://ct.test", redis_url, store, events(3))
    assert dead_letters(store) == [] and store.depth("default")["held_batches"] == 1
    assert f"HTTP {status}" in store.auth_state("default")["reason"]


@responses.activate
def test_a_413_halves_the_batch_and_sends_the_halves(redis_url: str, store: Store) -> None:
    sizes: list[int] = []

    def answer(request: Any) -> tuple[int, dict[str, str], bytes]:
        n = len(orjson.loads(request.body)["d"])
        sizes.append(n)
        if n > 2:
            return 413, {}, b"Request Entity Too Large"
        return 200, {}, orjson.dumps({"status": "success", "processed": n, "unprocessed": []})

    responses.add_callback(responses.POST, "http://ct.test/1/upload", callback=answer)
    deliver_through("http://ct.test", redis_url, store, events(7))
    assert sizes[0] == 7 and sorted(sizes[1:]) == [1, 2, 2, 2, 3, 4]
    assert store.stats("default")["delivered"] == 7 and dead_letters(store) == []


# ------------------------------------------------------------------------------------ 9. smaller


def test_the_rest_after_full_batches_waits_its_own_flush_interval(redis_url: str, store: Store) -> None:
    settings = emulator_settings(
        redis_url, "http://unused", CLEVERTAP_BATCH_SIZE="10", CLEVERTAP_FLUSH_INTERVAL="1"
    )
    d = Deliverer(settings, store, Dispatched())
    Ingestor(store, settings.integration("default")).ingest(events(10))
    time.sleep(1.05)  # these ten have waited their interval ...
    Ingestor(store, settings.integration("default")).ingest(events(3, start=10))  # ... these three have not
    assert d.assemble() == {"default": 1}  # a full batch of the first ten
    assert store.depth("default")["pending"] == 3  # the three wait for their own interval
    time.sleep(1.05)
    assert d.assemble() == {"default": 1} and store.depth("default")["pending"] == 0


def test_retry_after_zero_still_backs_off() -> None:
    c = classify(Attempt(429, b"", {"Retry-After": "0"}), ROWS)
    delays = [decide(c, ROWS, history(throttles=n), 3600, random.Random(n)).delay_s for n in range(8)]
    assert max(delays) > 1.0  # grows with the throttles, however small Retry-After is


def test_a_throttle_streak_ends_with_any_other_answer(store: Store) -> None:
    store.r.hset(store.key("default", "meta:b1"), mapping={"created": 1, "attempts": 0})
    store.r.zadd(store.key("default", "open"), {"b1": 0})
    # two sends (an owner each: the same owner again is one call sent twice, recorded once)
    store.retry_later("default", "b1", "w1", 0, "throttles", "HTTP 429")  # type: ignore[arg-type]
    store.retry_later("default", "b1", "w2", 0, "failures", "HTTP 503")  # type: ignore[arg-type]
    meta = store.r.hgetall(store.key("default", "meta:b1"))
    assert b"first_throttle" not in meta and b"first_failure" in meta


def test_any_200_proves_the_credentials_and_releases_held_batches(redis_url: str, store: Store) -> None:
    for bid in ("probe", "held1"):
        store.r.hset(store.key("default", f"meta:{bid}"), mapping={"created": 1, "attempts": 0})
        store.r.set(store.key("default", f"batch:{bid}"), ROWS[0])
    store.r.zadd(store.key("default", "open"), {"probe": 0})
    store.r.zadd(store.key("default", "held"), {"held1": 0})
    store.r.hset(store.key("default", "auth"), mapping={"reason": "401", "since": 1, "probe": "probe"})
    did, body = dead_letter("default", "api", code=509, error="refused", record={})
    # Every row of the probe was refused (a 200 with status fail): the credentials work all the same.
    applied, released = store.finish("default", "probe", "w", 0, [(did, body)], {}, authenticated=True)
    assert applied and [bid for bid, _ in released] == ["held1"] and store.auth_state("default") == {}


def test_an_api_dead_letter_without_its_record_is_not_replayed_as_null(
    store: Store, make_settings: Any
) -> None:
    did, body = dead_letter("default", "api", code=None, error="unmatched entry", record=None)
    store.r.hset(store.key("default", "dead"), did, body)
    store.r.zadd(store.key("default", "dead:idx"), {did: 1})
    result = replay(store, make_settings().integration("default"), where=Filter("default", "api"))
    assert result.replayed_records == 0 and result.unreplayable == [did]
    assert pending(store) == [] and store.dead_letter_count("default") == 1


# --------------------------------------------------------------------------- found in review


class Proxy407(BaseHTTPRequestHandler):
    """An HTTPS proxy that wants credentials: it answers the CONNECT, so no response reaches the client."""

    def log_message(self, *_: Any) -> None:
        pass

    def do_CONNECT(self) -> None:
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_an_https_proxy_asking_for_credentials_is_a_407_that_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(Proxy407) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        config = emulator_settings("redis://127.0.0.1:1/0", "https://eu1.api.clevertap.com").integration(
            "default"
        )
        attempt = UploadClient(1, 2).upload(config, b'{"d":[]}')
    assert attempt.status == 407
    assert classify(attempt, []).kind is Kind.CONFIG


def test_the_deadline_holds_while_a_connection_is_still_being_made(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3.util.connection

    real = urllib3.util.connection.create_connection

    def slow_connect(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.8)  # a slow name lookup: no socket yet when the deadline comes
        return real(*args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", slow_connect)
    with serve(Trickle) as url:
        config = emulator_settings("redis://127.0.0.1:1/0", url).integration("default")
        started = time.monotonic()
        attempt = UploadClient(0.2, 0.3).upload(config, b'{"d":[]}')  # a 0.5 s deadline
        took = time.monotonic() - started
    assert attempt.status is None and "deadline" in str(attempt.error)
    assert took < 3  # the trickle would take 30 s


def test_an_ingest_task_resumes_after_a_redis_blip_and_keeps_what_it_cannot_queue(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import runtime
    from tasks.pipeline_tasks import ingest

    for key, value in environment(redis_url).items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    no_ids = [{k: v for k, v in e.items() if k != "messageId"} for e in events(1500)]
    real, calls = Store.run, []

    def flaky(self: Store, ask: Any) -> Any:  # the enqueue itself, whichever way ingest sends it
        if not isinstance(ask, Enqueue):
            return real(self, ask)
        calls.append(1)
        if len(calls) == 2:
            raise redis.ConnectionError("a blip")
        if len(calls) == 4:
            raise redis.ResponseError("a script that fails the same way every time")
        return real(self, ask)

    monkeypatch.setattr(Store, "run", flaky)
    try:
        ingest.apply(args=(no_ids,), task_id="task-blip").get()  # eager: the retry runs at once
    finally:
        runtime.reset()
    # Chunk 1 queued; chunk 2 failed, retried, queued; chunk 3 broke the script: its 500 events are dead
    # letters, with the reason. None twice, none lost.
    assert len(pending(store)) == 1000
    letters = dead_letters(store)
    assert len(letters) == 500 and all(
        "could not be queued: ResponseError" in x["reasons"][0] for x in letters
    )


@responses.activate
def test_a_probe_refused_row_by_row_still_proves_the_credentials(redis_url: str, store: Store) -> None:
    responses.add(responses.POST, "http://ct.test/1/upload", status=401, body=b"")
    d = deliver_through("http://ct.test", redis_url, store, events(4), send=True, CLEVERTAP_BATCH_SIZE="2")
    assert store.depth("default")["held_batches"] == 2
    responses.replace(
        responses.POST,
        "http://ct.test/1/upload",
        body=orjson.dumps(
            {
                "status": "fail",
                "processed": 0,
                "unprocessed": [
                    {"code": 509, "error": "x. Skipped record number : 1"},
                    {"code": 509, "error": "x. Skipped record number : 2"},
                ],
            }
        ),
    )
    store.r.hset(store.key("default", "auth"), "next_probe", 0)
    d.deliverer.sweep()  # sends a probe: CleverTap refuses both rows, but it answered 200
    d.drain()
    assert store.auth_state("default") == {} and store.depth("default")["held_batches"] == 0
