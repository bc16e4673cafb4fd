"""The collector's handler against a real Redis: authentication, limits, encodings, answers, and what gets
queued; and its configuration."""

from __future__ import annotations

import base64
import gzip
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from pipeline.collector.app import create_app
from pipeline.collector.core import MAX_BATCH_BYTES, MAX_CALL_BYTES, Answer, Collector
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError
from pipeline.store import Store
from tests.helpers import dead_letters, environment, pending

KEY = "wk-test-0123456789abcdef"


def settings_for(redis_url: str, **extra: Any) -> Settings:
    return load_settings(environment(redis_url, CLEVERTAP_WRITE_KEY=KEY, **extra))


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def post(collector: Collector, path: str, body: Any, headers: dict[str, str] | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return collector.handle(path, headers if headers is not None else basic(KEY), raw)


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "userId": f"u{n}", "messageId": f"m{n}", **extra}


@pytest.fixture
def collector(redis_url: str, store: Store) -> Collector:
    return Collector(settings_for(redis_url), store)


def test_a_batch_is_queued_and_answered_200_only_then(collector: Collector, store: Store) -> None:
    answer = post(collector, "/v1/batch", {"batch": [track(1), track(2)], "sentAt": "2024-01-29T14:53:20Z"})
    assert (answer.status, answer.body) == (200, {"success": True})
    assert [r["objectId"] for r in pending(store)] == ["u1", "u2"]


@pytest.mark.parametrize("call", ["track", "identify", "page", "screen", "alias", "group"])
def test_every_single_call_is_accepted_with_its_type_from_the_path(
    call: str, collector: Collector, store: Store
) -> None:
    body: dict[str, Any] = {"userId": "u1", "messageId": f"s-{call}", "writeKey": KEY}
    if call == "track":
        body["event"] = "Signed Up"
    answer = post(collector, f"/v1/{call}", body, headers={})  # writeKey in the body, no header
    assert answer.status == 200, answer.body
    queued = pending(store)
    if call in ("alias", "group"):
        assert queued == [] and store.stats("default")["filtered"] == 1  # filtered, never an error
    else:
        assert len(queued) == 1
    assert dead_letters(store) == []


def test_one_bad_event_does_not_refuse_the_others(collector: Collector, store: Store) -> None:
    answer = post(collector, "/v1/batch", {"batch": [track(1), {"type": "nope", "writeKey": KEY}, track(2)]})
    assert answer.status == 200
    assert len(pending(store)) == 2
    (letter,) = dead_letters(store)
    assert "type: 'nope'" in letter["reasons"][0] and KEY not in orjson.dumps(letter).decode()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("wrong-0123456789abcdef"),
        {"authorization": "Basic !!!"},
        {"authorization": "Bearer " + KEY},
        basic(""),
    ],
)
def test_a_wrong_or_missing_write_key_is_401_and_queues_nothing(
    headers: dict[str, str], collector: Collector, store: Store
) -> None:
    answer = post(collector, "/v1/batch", {"batch": [track(1)]}, headers=headers)
    assert answer.status == 401 and answer.body["success"] is False
    assert "wrong" not in orjson.dumps(answer.body).decode() and pending(store) == []


def test_gzip_bodies_are_read_and_bombs_are_refused(collector: Collector, store: Store) -> None:
    gz = {**basic(KEY), "content-encoding": "gzip"}
    assert post(collector, "/v1/batch", gzip.compress(orjson.dumps({"batch": [track(1)]})), gz).status == 200
    bomb = gzip.compress(b'{"batch": [' + b" " * (MAX_BATCH_BYTES + 10) + b"]}")
    assert len(bomb) < 10_000
    answer = post(collector, "/v1/batch", bomb, gz)
    assert answer.status == 400 and answer.body["code"] == "too_large"
    bad = post(collector, "/v1/batch", b"not gzip", gz)
    assert bad.status == 400 and "not" in bad.body["message"]
    cut = post(collector, "/v1/batch", gzip.compress(b'{"batch": []}')[:-6], gz)
    assert cut.status == 400
    other = post(collector, "/v1/batch", b"{}", {**basic(KEY), "content-encoding": "br"})
    assert other.status == 400 and "br" in other.body["message"]
    assert len(pending(store)) == 1


@pytest.mark.parametrize(
    ("path", "body", "code", "message"),
    [
        ("/v1/batch", b"{not json", "bad_json", "the body is not JSON"),
        ("/v1/batch", b"[1]", "bad_json", "must be a JSON object"),
        ("/v1/batch", b'{"batch": {}}', "bad_batch", "batch: required, a list of calls"),
        ("/v1/track", b"x" * (MAX_CALL_BYTES + 1), "too_large", "a single call may be at most 32 KB"),
        ("/v1/batch", b"x" * (MAX_BATCH_BYTES + 1), "too_large", "a batch may be at most 500 KB"),
    ],
)
def test_bad_bodies_are_400_naming_the_problem(
    path: str, body: bytes, code: str, message: str, collector: Collector
) -> None:
    answer = post(collector, path, body)
    assert answer.status == 400 and answer.body["code"] == code and message in answer.body["message"]


def test_unknown_paths_are_404(collector: Collector) -> None:
    assert post(collector, "/v1/merge", {}).status == 404
    assert post(collector, "/v2/batch", {}).status == 404


def test_the_batch_context_applies_to_each_call(collector: Collector, store: Store) -> None:
    context = {"traits": {"email": "batch@example.com"}, "consent": {"categories": ["marketing"]}}
    own = track(2, context={"traits": {"email": "own@example.com"}})
    assert post(collector, "/v1/batch", {"batch": [track(1), own], "context": context}).status == 200
    assert [r["identity"] for r in pending(store)] == ["batch@example.com", "own@example.com"]


def test_redis_unreachable_or_a_full_queue_is_503_with_retry_after(redis_url: str, store: Store) -> None:
    down = Collector(settings_for("redis://127.0.0.1:1/0"), Store.from_url("redis://127.0.0.1:1/0"))
    answer = post(down, "/v1/batch", {"batch": [track(1)]})
    assert answer.status == 503 and answer.headers["Retry-After"] == "5" and not down.healthy()
    full = Collector(settings_for(redis_url, CLEVERTAP_MAX_PENDING="1"), store)
    assert post(full, "/v1/batch", {"batch": [track(1)]}).status == 200
    answer = post(full, "/v1/batch", {"batch": [track(2)]})
    assert (
        answer.status == 503 and answer.headers["Retry-After"] == "30" and answer.body["code"] == "queue_full"
    )


def test_the_write_key_chooses_the_integration(redis_url: str, store: Store, tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(
        f"""
redis_url = "{redis_url}"
[integrations.eu]
account_id = "EU"
passcode = "p"
region = "eu1"
write_key = "wk-eu-0123456789abcdef"
[integrations.india]
account_id = "IN"
passcode = "p"
region = "in1"
write_key_env = "INDIA_WRITE_KEY"
[integrations.quiet]
account_id = "Q"
passcode = "p"
region = "us1"
"""
    )
    settings = load_settings(
        {"CLEVERTAP_PIPELINE_CONFIG": str(path), "INDIA_WRITE_KEY": "wk-in-0123456789abcdef"}
    )
    collector = Collector(settings, store)
    assert post(collector, "/v1/track", track(1), basic("wk-in-0123456789abcdef")).status == 200
    assert post(collector, "/v1/track", track(2), basic("wk-eu-0123456789abcdef")).status == 200
    assert [r["objectId"] for r in pending(store, "india")] == ["u1"]
    assert [r["objectId"] for r in pending(store, "eu")] == ["u2"]
    assert "wk-eu" not in repr(settings) + str(settings.public_dict()) and "wk-in" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"CLEVERTAP_WRITE_KEY": "short"}, "CLEVERTAP_WRITE_KEY"),
        ({"CLEVERTAP_WRITE_KEY": "has:a-colon-0123456789"}, "without spaces or ':'"),
    ],
)
def test_write_keys_are_validated(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**environment(), **env})
    assert error in str(caught.value.errors)


def test_the_http_app_limits_what_it_reads_and_sets_security_headers(redis_url: str, store: Store) -> None:
    app = create_app(settings_for(redis_url), store)
    with TestClient(app) as client:
        ok = client.post("/v1/batch", content=orjson.dumps({"batch": [track(1)]}), auth=(KEY, ""))
        assert ok.status_code == 200 and ok.json() == {"success": True}
        assert ok.headers["x-content-type-options"] == "nosniff" and ok.headers["cache-control"] == "no-store"
        big = client.post("/v1/track", content=b"x" * (MAX_CALL_BYTES + 1), auth=(KEY, ""))
        assert big.status_code == 400 and big.json()["code"] == "too_large"
        assert client.get("/health").json() == {"ok": True}
        assert client.get("/v1/batch").status_code == 405
    assert len(pending(store)) == 1


def test_the_calls_path_answers_as_starlette_would_and_a_bug_is_a_500_that_quotes_nothing(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # POST /v1/<call> is served by plain ASGI (CollectorApp), past Starlette: the same answers
    app = create_app(settings_for(redis_url), store)
    starlette, entered = app.starlette, []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            entered.append(scope["path"])
        await starlette(scope, receive, send)

    app.starlette = watched  # type: ignore[assignment]
    security = {"x-content-type-options": "nosniff", "cache-control": "no-store"}
    with TestClient(app) as client:
        ok = client.post("/v1/track", content=orjson.dumps(track(1)), auth=(KEY, ""))
        assert ok.status_code == 200 and ok.content == b'{"success":true}'
        assert ok.headers["content-type"] == "application/json" and ok.headers["content-length"] == "16"
        assert ok.headers["content-security-policy"].startswith("default-src 'none'")
        assert security.items() <= ok.headers.items()
        again = client.post("/v1/track", content=orjson.dumps(track(3)), auth=(KEY, ""))  # the cached 200
        assert [k for k, _ in again.headers.raw].count(b"content-type") == 1
        refused = client.post("/v1/nope", content=b"{}", auth=(KEY, ""))
        assert refused.status_code == 404 and refused.json()["code"] == "not_found"
        big = client.post("/v1/track", content=b"x" * (MAX_CALL_BYTES + 1), auth=(KEY, ""))
        assert big.status_code == 400 and big.json()["code"] == "too_large"
        assert entered == []  # every POST /v1/<call> above went past Starlette
        wrong_method = client.get("/v1/track")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert entered == ["/v1/track"]

        def broken(*_: Any) -> Any:
            raise ValueError("the body said jane@example.com")

        monkeypatch.setattr(Collector, "prepare", broken)
        with caplog.at_level("INFO", logger="pipeline.collector"):
            failed = client.post("/v1/track", content=orjson.dumps(track(2)), auth=(KEY, ""))
        assert failed.status_code == 500 and failed.json() == {
            "success": False, "code": "internal", "message": "the collector failed; try again"
        }  # fmt: skip
        assert (
            failed.headers["content-type"] == "application/json"
            and security.items() <= failed.headers.items()
        )
        lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.collector"]
        assert len(lines) == 1 and "ValueError at" in lines[0] and "jane@" not in caplog.text
        assert "jane@" not in failed.text
    assert app.in_flight == [0] and app.by_client == {}  # every request counted out, the 500's too
    assert [r["objectId"] for r in pending(store)] == ["u1", "u3"]


def test_a_request_is_queued_whole_or_not_at_all_so_a_resend_never_doubles(
    redis_url: str, store: Store
) -> None:
    # 1,500 calls without messageIds (no de-duplication to lean on), past the high-water mark midway.
    full = Collector(settings_for(redis_url, CLEVERTAP_MAX_PENDING="600"), store)
    calls = [{"type": "track", "event": "X", "userId": f"u{n}"} for n in range(1500)] + [{"type": "nope"}]
    assert post(full, "/v1/batch", {"batch": calls[:700]}).status == 200
    refused = post(full, "/v1/batch", {"batch": calls})
    assert refused.status == 503 and len(pending(store)) == 700 and len(dead_letters(store)) == 0
    store.r.delete(store.key("default", "pending"))  # delivery catches up
    assert post(full, "/v1/batch", {"batch": calls}).status == 200  # the SDK's resend
    assert len(pending(store)) == 1500 and len(dead_letters(store)) == 1


def test_any_redis_failure_is_503_never_500_and_health_needs_a_write(redis_url: str, store: Store) -> None:
    collector = Collector(settings_for(redis_url), store)
    store.r.config_set("maxmemory", "1")  # out of memory: Redis refuses writes (noeviction)
    try:
        answer = post(collector, "/v1/batch", {"batch": [track(1)]})
        assert answer.status == 503 and answer.headers["Retry-After"] == "5" and not collector.healthy()
    finally:
        store.r.config_set("maxmemory", "0")
    assert collector.healthy() and post(collector, "/v1/batch", {"batch": [track(2)]}).status == 200


def test_after_redis_fails_to_answer_requests_are_refused_at_once_for_a_second() -> None:
    down = Collector(settings_for("redis://127.0.0.1:1/0"), Store.from_url("redis://127.0.0.1:1/0"))
    assert post(down, "/v1/batch", {"batch": [track(1)]}).status == 503
    started = time.monotonic()
    assert post(down, "/v1/batch", {"batch": [track(2)]}).status == 503
    assert down.unavailable_until > started  # refused without trying Redis again


def test_the_path_decides_the_call_type_and_integrations_can_turn_clevertap_off(
    collector: Collector, store: Store
) -> None:
    assert post(collector, "/v1/track", {**track(1), "type": "identify", "event": "E"}).status == 200
    (record,) = pending(store)
    assert record["type"] == "event" and record["evtName"] == "E"
    batch = {
        "batch": [
            track(2, integrations={"CleverTap": True}),
            track(3),
            track(4, integrations={"Clever Tap": False}),
        ],
        "integrations": {"All": False},
    }
    assert post(collector, "/v1/batch", batch).status == 200
    assert [r["objectId"] for r in pending(store)] == ["u1", "u2"]  # u3: All off; u4: CleverTap off
    assert store.stats("default")["filtered"] == 2


def test_calls_that_are_not_objects_refuse_the_batch_rather_than_flood_the_dead_letters(
    collector: Collector, store: Store
) -> None:
    answer = post(collector, "/v1/batch", {"batch": [track(1), 0, 0]})
    assert answer.status == 400 and answer.body["message"].startswith("batch[1]: must be a call")
    assert pending(store) == [] and dead_letters(store) == []


def test_every_gzip_member_is_read(collector: Collector, store: Store) -> None:
    body = orjson.dumps({"batch": [track(1), track(2)]})
    two_members = gzip.compress(body[:20]) + gzip.compress(body[20:])
    assert post(collector, "/v1/batch", two_members, {**basic(KEY), "content-encoding": "gzip"}).status == 200
    assert len(pending(store)) == 2


def test_a_wrong_key_in_the_header_is_refused_before_the_body_is_read(redis_url: str, store: Store) -> None:
    app = create_app(settings_for(redis_url), store)
    with TestClient(app) as client:
        answer = client.post("/v1/batch", content=b"{not even json", auth=("wrong-0123456789abcdef", ""))
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
