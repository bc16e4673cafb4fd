"""The collector as a website's tag sees it, against a real Redis: CORS by each integration's allowed
origins, analytics-next's short paths and text/plain bodies, the visitor's clock corrected, a rate limit
per client address behind trusted proxies only, the settings both SDKs fetch while loading, and one bad
call never sinking its batch."""

from __future__ import annotations

import base64
import gc
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from pipeline.collector.app import GC_THRESHOLDS, app_factory, create_app
from pipeline.collector.browser import RateLimit, client_address, corrected, origin_matches
from pipeline.collector.core import Collector, Prepared
from pipeline.config import Settings, load_settings
from pipeline.store import Store
from tests.helpers import dead_letters, environment, pending

KEY = "wk-browser-0123456789"
SHOP = "https://shop.example.com"


def settings_for(redis_url: str, **extra: Any) -> Settings:
    return load_settings(
        environment(
            redis_url,
            CLEVERTAP_WRITE_KEY=KEY,
            CLEVERTAP_ALLOWED_ORIGINS=f"{SHOP},https://*.shop.test",
            **extra,
        )
    )


@pytest.fixture
def client(redis_url: str, store: Store) -> TestClient:
    return TestClient(create_app(settings_for(redis_url), store))


def accepted(collector: Collector, path: str, body: dict[str, Any]) -> Prepared:
    """What the collector prepares for ``body`` on ``path``: a request it accepts, not yet queued."""
    found = collector.prepare(path, {}, orjson.dumps(body))
    assert isinstance(found, Prepared), found
    return found


def track(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "userId": f"u{n}", "messageId": f"b{n}", **extra}


def test_origins_match_exactly_or_by_subdomain() -> None:
    allowed = [SHOP, "https://*.shop.test"]
    assert origin_matches(SHOP, allowed) and origin_matches("https://eu.shop.test", allowed)
    assert not origin_matches("https://shop.test", allowed)  # the wildcard is for subdomains only
    assert not origin_matches("http://shop.example.com", allowed)  # another scheme is another origin
    assert not origin_matches("https://shop.example.com.evil.test", allowed)
    assert not origin_matches("https://evil.test/.shop.test", allowed)
    assert not origin_matches("https://shop.example.com:8443", allowed)


def test_a_preflight_from_an_allowed_origin_gets_what_the_sdks_need(client: TestClient) -> None:
    asked = {"origin": SHOP, "access-control-request-method": "POST",
             "access-control-request-headers": "content-type, authorization, x-evil"}  # fmt: skip
    ok = client.options("/v1/t", headers=asked)
    assert ok.status_code == 204
    assert (
        ok.headers["access-control-allow-origin"] == SHOP
        and "POST" in ok.headers["access-control-allow-methods"]
    )
    assert ok.headers["access-control-allow-headers"] == "content-type, authorization"
    assert "Origin" in ok.headers["vary"] and int(ok.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in ok.headers
    refused = client.options("/v1/t", headers={**asked, "origin": "https://evil.test"})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


def test_a_browser_post_is_held_to_its_integrations_origins(client: TestClient, store: Store) -> None:
    body = orjson.dumps({**track(1), "writeKey": KEY})
    evil = client.post(
        "/v1/t", content=body, headers={"origin": "https://evil.test", "content-type": "text/plain"}
    )
    assert evil.status_code == 403 and pending(store) == []  # nothing queued
    ok = client.post("/v1/t", content=body, headers={"origin": SHOP, "content-type": "text/plain"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == SHOP
    assert [r["evtName"] for r in pending(store)] == ["Product Viewed"]
    server = client.post("/v1/track", content=body)  # no Origin: a server SDK, as before
    assert server.status_code == 200 and "access-control-allow-origin" not in server.headers


def test_analytics_next_short_paths_and_its_batch(client: TestClient, store: Store) -> None:
    for path, call in (("/v1/i", {"type": "identify", "traits": {"email": "a@example.com"}}),
                       ("/v1/p", {"type": "page", "name": "Home"})):  # fmt: skip
        body = {**call, "userId": "u1", "messageId": path, "writeKey": KEY}
        assert client.post(path, content=orjson.dumps(body), headers={"origin": SHOP}).status_code == 200
    batch = {"batch": [track(2), track(3)], "writeKey": KEY, "sentAt": datetime.now(UTC).isoformat()}
    assert client.post("/v1/b", content=orjson.dumps(batch), headers={"origin": SHOP}).status_code == 200
    assert len(pending(store)) == 4  # a profile, Web Page Viewed, two Product Viewed


def test_a_visitors_clock_an_hour_fast_is_corrected_by_the_receive_time(
    client: TestClient, store: Store
) -> None:
    now = datetime.now(UTC)
    fast = now + timedelta(hours=1)
    call = {**track(9), "writeKey": KEY, "timestamp": (fast - timedelta(seconds=30)).isoformat(),
            "sentAt": fast.isoformat()}  # fmt: skip
    assert client.post("/v1/t", content=orjson.dumps(call), headers={"origin": SHOP}).status_code == 200
    (record,) = pending(store)
    assert abs(record["ts"] - (now.timestamp() - 30)) < 60  # within a minute of the truth, not an hour
    untouched = corrected({"timestamp": "2024-01-01T00:00:00Z"}, now)
    assert untouched == {"timestamp": "2024-01-01T00:00:00Z"}  # no sentAt: as it came
    sent = (now + timedelta(hours=1)).isoformat()
    numeric = corrected({"timestamp": int(now.timestamp() + 3600) * 1000, "sentAt": sent}, now)
    assert abs(datetime.fromisoformat(numeric["timestamp"]).timestamp() - now.timestamp()) < 2  # epoch ms too
    far = {"timestamp": "2025-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}
    assert corrected(far, now) == far  # not a clock that is off: left alone (it was a 500 and a traceback)
    bad = {**track(8), "writeKey": KEY, "sentAt": "9999-12-31T23:59:59Z", "timestamp": "2025-01-01T00:00:00Z"}
    assert client.post("/v1/t", content=orjson.dumps(bad), headers={"origin": SHOP}).status_code == 200


def test_browser_requests_are_rate_limited_per_client_and_counted(redis_url: str, store: Store) -> None:
    collector = Collector(settings_for(redis_url, CLEVERTAP_BROWSER_RATE_BURST="3"), store)
    ticks = iter(float(n) * 0.001 for n in range(1000))
    collector.rate = RateLimit(clock=lambda: next(ticks))
    body = orjson.dumps({**track(1), "writeKey": KEY})
    answers = [collector.handle("/v1/t", {"origin": SHOP}, body, "203.0.113.7").status for _ in range(5)]
    assert answers == [200, 200, 200, 429, 429]
    limited = collector.handle("/v1/t", {"origin": SHOP}, body, "203.0.113.7")
    assert int(limited.headers["Retry-After"]) >= 1 and store.stats("default")["browser_rate_limited"] == 3
    assert collector.handle("/v1/t", {"origin": SHOP}, body, "203.0.113.8").status == 200  # another visitor
    # the key is public: a request without an Origin (curl) with it is held to the same limit
    assert collector.handle("/v1/track", {}, body, "203.0.113.7").status == 429


def test_a_servers_key_is_not_rate_limited(redis_url: str, store: Store) -> None:
    collector = Collector(
        load_settings(environment(redis_url, CLEVERTAP_WRITE_KEY=KEY, CLEVERTAP_BROWSER_RATE_BURST="1")),
        store,
    )
    body = orjson.dumps({**track(1), "writeKey": KEY})
    assert [collector.handle("/v1/track", {}, body, "203.0.113.7").status for _ in range(3)] == [200] * 3


def test_x_forwarded_for_counts_only_from_trusted_proxies() -> None:
    assert client_address("198.51.100.1", "203.0.113.9", []) == "198.51.100.1"
    assert client_address("198.51.100.1", "203.0.113.9", ["10.0.0.0/8"]) == "198.51.100.1"  # not a proxy
    assert client_address("10.0.0.5", "1.2.3.4, 203.0.113.9, 10.0.0.9", ["10.0.0.0/8"]) == "203.0.113.9"
    # one IPv6 /64 is one client, whatever address in it: a subscriber there has billions
    assert (
        client_address("2001:db8::1", "", []) == client_address("2001:db8::ffff:1", "", []) == "2001:db8::/64"
    )


def test_the_sdks_load_their_settings_from_the_collector(client: TestClient) -> None:
    seg = client.get(
        f"/v1/projects/{KEY}/settings", headers={"origin": SHOP, "host": "collect.shop.test:8088"}
    )
    assert seg.status_code == 200 and seg.headers["access-control-allow-origin"] == SHOP
    assert seg.json()["integrations"]["Segment.io"]["apiHost"] == "collect.shop.test:8088/v1"
    assert client.get("/v1/projects/wk-unknown-000000000/settings").status_code == 401
    basic = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    rudder = client.get("/sourceConfig/?p=npm&v=3", headers={"origin": SHOP, "authorization": basic})
    assert rudder.status_code == 200 and rudder.json()["source"]["enabled"] is True
    assert (
        client.get(
            "/sourceConfig/", headers={"origin": "https://evil.test", "authorization": basic}
        ).status_code
        == 403
    )


def test_one_call_nested_too_deep_becomes_a_dead_letter_and_the_rest_are_queued(
    redis_url: str, store: Store
) -> None:
    deep: Any = "bottom"
    for _ in range(300):
        deep = {"d": deep}
    batch = {"batch": [track(n) for n in range(99)] + [track(99, properties={"deep": deep})], "writeKey": KEY}
    body = json.dumps(batch).encode()  # orjson writes 254 levels at most; an SDK's JSON has no such limit
    answer = Collector(settings_for(redis_url), store).handle("/v1/batch", {}, body)
    assert answer.status == 200, answer.body  # it was a 503 on every try: the SDK retried it for ever
    assert len(pending(store)) == 99
    (letter,) = dead_letters(store)
    assert "nested" in letter["reasons"][0] and "not kept" in orjson.dumps(letter["event"]).decode()


def test_redirects_are_never_built_from_the_host_header(client: TestClient) -> None:
    answer = client.get("/health/", headers={"host": "evil.test"}, follow_redirects=False)
    assert answer.status_code in (404, 405) and "location" not in answer.headers


def test_requests_ready_together_are_queued_together_each_once(redis_url: str, store: Store) -> None:
    import asyncio

    from pipeline.collector.app import GroupCommit
    from pipeline.collector.core import Prepared

    collector = Collector(settings_for(redis_url), store)
    calls = 0
    queue = collector.queue_many

    def counted(integration: str, requests: list[Prepared]) -> Any:
        nonlocal calls
        calls += 1
        return queue(integration, requests)

    collector.queue_many = counted  # type: ignore[method-assign]

    async def burst() -> list[int]:
        commits = GroupCommit()
        prepared = [
            collector.prepare("/v1/track", {}, orjson.dumps({**track(n), "writeKey": KEY})) for n in range(40)
        ]
        answers = await asyncio.gather(
            *(commits.submit(collector, p) for p in prepared if isinstance(p, Prepared))
        )
        return [a.status for a in answers]

    assert asyncio.run(burst()) == [200] * 40
    assert calls == 1  # one enqueue, one Redis round trip, for the forty
    assert sorted(r["objectId"] for r in pending(store)) == sorted(f"u{n}" for n in range(40))  # each once


def test_an_enqueue_on_the_event_loop_lets_the_next_requests_gather_behind_it(
    redis_url: str, store: Store
) -> None:
    import asyncio

    import redis.asyncio

    from pipeline.collector.app import GroupCommit

    collector = Collector(settings_for(redis_url), store)
    sizes: list[int] = []
    queue = collector.queue_many_async

    async def counted(integration: str, requests: list[Prepared], client: Any) -> Any:
        sizes.append(len(requests))
        return await queue(integration, requests, client)

    collector.queue_many_async = counted  # type: ignore[method-assign]

    def prepared(n: int) -> Prepared:
        return accepted(collector, "/v1/track", {**track(n), "writeKey": KEY})

    async def burst() -> list[int]:
        commits = GroupCommit()
        commits.redis = redis.asyncio.Redis.from_url(redis_url)
        try:
            first = commits.submit(collector, prepared(0))  # out at once: nothing else is in flight
            await asyncio.sleep(0)
            assert commits.running == 1
            # these arrive while it waits on Redis: they go together, in the next enqueue
            rest = [commits.submit(collector, prepared(n), in_flight=11) for n in range(1, 11)]
            answers = await asyncio.gather(first, *rest)
        finally:
            await commits.redis.aclose()
        return [a.status for a in answers]

    assert asyncio.run(burst()) == [200] * 11
    assert sizes == [1, 10]
    assert sorted(r["objectId"] for r in pending(store)) == sorted(f"u{n}" for n in range(11))  # each once


def test_an_enqueue_on_the_event_loop_answers_503_when_redis_is_away(redis_url: str, store: Store) -> None:
    import asyncio

    import redis.asyncio

    from pipeline.collector.app import GroupCommit
    from pipeline.collector.core import Prepared
    from pipeline.local.redis_server import free_port

    collector = Collector(settings_for(redis_url), store)
    found = collector.prepare("/v1/track", {}, orjson.dumps({**track(1), "writeKey": KEY}))
    assert isinstance(found, Prepared)

    async def refused() -> Any:
        commits = GroupCommit()
        commits.redis = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing there
        try:
            return await commits.submit(collector, found)
        finally:
            await commits.redis.aclose()

    answer = asyncio.run(refused())
    assert (
        answer.status == 503 and answer.headers["Retry-After"] == "5" and answer.body["code"] == "unavailable"
    )
    assert pending(store) == []


def test_the_served_app_queues_through_its_asyncio_client(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def blocking(*_: Any) -> Any:
        raise AssertionError("the blocking enqueue")  # answered 503 if it were taken

    monkeypatch.setattr(Collector, "queue_many", blocking)
    app = create_app(settings_for(redis_url), store)
    with TestClient(app) as client:  # the app's lifespan opens the asyncio client
        answer = client.post("/v1/t", content=orjson.dumps({**track(5), "writeKey": KEY}))
        assert answer.status_code == 200
    assert [r["objectId"] for r in pending(store)] == ["u5"]


def test_a_commit_cancelled_before_it_runs_answers_503_and_the_next_goes_through(
    redis_url: str, store: Store
) -> None:
    import asyncio

    import redis.asyncio

    from pipeline.collector.app import GroupCommit

    collector = Collector(settings_for(redis_url), store)

    def prepared(n: int) -> Prepared:
        return accepted(collector, "/v1/track", {**track(n), "writeKey": KEY})

    async def cancelled_then_next() -> tuple[int, int]:
        commits = GroupCommit()
        commits.redis = redis.asyncio.Redis.from_url(redis_url)
        try:
            first = commits.submit(collector, prepared(1))
            await asyncio.sleep(0)  # the flush ran: its commit task exists, not yet started
            (task,) = commits.tasks
            task.cancel()
            refused = await asyncio.wait_for(first, 5)  # answered, not left waiting
            second = await asyncio.wait_for(commits.submit(collector, prepared(2)), 5)
        finally:
            await commits.redis.aclose()
        return refused.status, second.status

    assert asyncio.run(cancelled_then_next()) == (503, 200)
    assert [r["objectId"] for r in pending(store)] == ["u2"]


def test_values_left_out_are_counted_through_the_asyncio_client_too(redis_url: str, store: Store) -> None:
    import asyncio

    import redis.asyncio

    from pipeline.collector.core import Prepared

    collector = Collector(settings_for(redis_url), store)
    identify = {"type": "identify", "userId": "u1", "messageId": "fd-1", "writeKey": KEY,
                "traits": {"email": "u1@example.com", "phone": "5550100"}}  # fmt: skip
    found = collector.prepare("/v1/identify", {}, orjson.dumps(identify))
    assert isinstance(found, Prepared)

    async def queue() -> Any:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await collector.queue_many_async("default", [found], client)
        finally:
            await client.aclose()

    assert asyncio.run(queue()).status == 200
    stats = store.stats("default")
    assert stats["fields_dropped"] == 1 and stats["fields_dropped:Phone"] == 1


def test_each_200_carries_the_cors_headers_of_its_own_origin(redis_url: str, store: Store) -> None:
    # the 200 is encoded once per origin (the answer to nearly every request): never another origin's
    with TestClient(create_app(settings_for(redis_url), store)) as client:
        origins = [SHOP, "https://a.shop.test", SHOP, "https://b.shop.test", None, "https://a.shop.test"]
        for n, origin in enumerate(origins):
            headers = {"content-type": "text/plain", **({"origin": origin} if origin else {})}
            answer = client.post(
                "/v1/t", content=orjson.dumps({**track(n), "writeKey": KEY}), headers=headers
            )
            assert answer.status_code == 200 and answer.json() == {"success": True}
            assert answer.headers.get("access-control-allow-origin") == origin
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["content-length"] == str(len(answer.content))
    assert len(pending(store)) == len(origins)


def test_a_served_collector_tunes_its_garbage_collector_and_a_test_app_does_not(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = gc.get_threshold()
    try:
        with TestClient(create_app(settings_for(redis_url), store)):
            assert gc.get_threshold() == before  # an app in a larger process leaves it alone
        with TestClient(create_app(settings_for(redis_url), store, tune_gc=True)):
            assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    made: list[dict[str, Any]] = []
    monkeypatch.setattr("pipeline.collector.app.create_app", lambda **kw: made.append(kw))
    app_factory()  # what `collect` serves, in each worker process
    assert made == [{"tune_gc": True}]


def test_an_integration_has_one_enqueue_out_at_a_time_even_past_a_chunk(redis_url: str, store: Store) -> None:
    import asyncio

    from pipeline.collector.app import GroupCommit
    from pipeline.collector.core import OK
    from pipeline.ingest import CHUNK

    collector = Collector(settings_for(redis_url), store)
    out: list[int] = []  # requests in each enqueue, when it goes out
    ended: list[int] = []
    release = asyncio.Event()

    async def held(integration: str, requests: list[Prepared], client: Any) -> Any:
        assert len(out) == len(ended)  # the one before it has ended
        out.append(len(requests))
        await release.wait()  # out at Redis until the test lets it answer
        ended.append(len(requests))
        return OK

    collector.queue_many_async = held  # type: ignore[method-assign]
    per_request = CHUNK // 2 + 1  # two such requests are past one enqueue's CHUNK events

    def batch(n: int) -> Prepared:
        calls = [track(n * 1000 + k) for k in range(per_request)]
        return accepted(collector, "/v1/batch", {"batch": calls, "writeKey": KEY})

    async def run() -> list[int]:
        commits = GroupCommit()
        commits.redis = object()  # the asyncio path (its client is never used here)
        answers = [commits.submit(collector, batch(n), in_flight=3) for n in range(3)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert out == [1] and commits.running == 1  # one out; the other two wait, though both fit no chunk
        release.set()
        return [a.status for a in await asyncio.gather(*answers)]

    assert asyncio.run(run()) == [200] * 3
    assert out == ended == [1, 1, 1]  # each alone (past CHUNK together), one after another


def _hold_settings(redis_url: str) -> Settings:
    return settings_for(redis_url, CLEVERTAP_ANONYMOUS="hold")


def test_an_integrations_requests_reach_redis_in_the_order_they_came(redis_url: str, store: Store) -> None:
    # the first request's enqueue has a round trip more (a visitor's held events looked up): the next one,
    # begun beside it, must not land first (a profile's older value would be applied last)
    import asyncio

    import redis.asyncio

    from pipeline.collector.app import GroupCommit

    collector = Collector(_hold_settings(redis_url), store)

    def identify(plan: str, n: int, **extra: Any) -> Prepared:
        body = {"type": "identify", "userId": "u-1", "messageId": f"m{n}", "writeKey": KEY,
                "traits": {"email": "a@example.com", "plan": plan}, **extra}  # fmt: skip
        return accepted(collector, "/v1/identify", body)

    async def run() -> None:
        commits = GroupCommit()
        commits.redis = redis.asyncio.Redis.from_url(redis_url)
        try:
            await asyncio.gather(*(commits.redis.ping() for _ in range(3)))  # connections open
            first = commits.submit(collector, identify("old", 0, anonymousId="v"), in_flight=1)
            await asyncio.sleep(0)  # its first round trip is out
            n = 8
            rest = [commits.submit(collector, identify("new", k), in_flight=1 + n) for k in range(1, 1 + n)]
            await asyncio.gather(first, *rest)
        finally:
            await commits.redis.aclose()

    asyncio.run(run())
    plans = [r["profileData"]["plan"] for r in pending(store) if "profileData" in r]
    assert plans == ["old"] + ["new"] * 8


def test_an_anonymous_event_held_just_before_its_visitors_identify_is_released_with_it(
    redis_url: str, store: Store
) -> None:
    import asyncio

    import redis.asyncio

    from pipeline.collector.app import GroupCommit
    from pipeline.ingest import _visitor_of, ingest

    settings = _hold_settings(redis_url)
    visitor = "anon-1"

    def page(n: int, anonymous: str = visitor) -> dict[str, Any]:
        return {"type": "page", "name": f"Page {n}", "anonymousId": anonymous, "messageId": f"h{n}",
                "timestamp": "2026-11-30T10:00:00Z", "writeKey": KEY}  # fmt: skip

    ingest([{k: v for k, v in page(1).items() if k != "writeKey"}], settings=settings, store=store)  # held
    collector = Collector(settings, store)

    def prepared(path: str, body: dict[str, Any]) -> Prepared:
        return accepted(collector, path, body)

    async def run() -> list[int]:
        commits = GroupCommit()
        commits.redis = redis.asyncio.Redis.from_url(redis_url)
        try:
            await asyncio.gather(*(commits.redis.ping() for _ in range(3)))
            # one enqueue with two round trips before its script (an email and a visitor looked up) that
            # holds the visitor's second page; while it is out, the visitor's identify and others are ready
            track = {**track_call(0), "anonymousId": "w", "writeKey": KEY}
            first = [commits.submit(collector, prepared("/v1/track", track), in_flight=2),
                     commits.submit(collector, prepared("/v1/page", page(2)), in_flight=2)]  # fmt: skip
            for _ in range(3):
                await asyncio.sleep(0)
            who = {"type": "identify", "userId": "u-1", "anonymousId": visitor, "messageId": "id-1",
                   "traits": {"email": "ana@example.com"}, "writeKey": KEY}  # fmt: skip
            n = 8
            then = [commits.submit(collector, prepared("/v1/identify", who), in_flight=2 + n)]
            then += [
                commits.submit(collector, prepared("/v1/page", page(50 + k, f"other-{k}")), in_flight=2 + n)
                for k in range(1, n)
            ]
            answers = await asyncio.gather(*first, *then)
        finally:
            await commits.redis.aclose()
        return [a.status for a in answers]

    assert set(asyncio.run(run())) == {200}
    key = _visitor_of({"anonymousId": visitor})
    assert key is not None and not store.held_events("default", [key])  # none left behind
    names = [r["evtData"].get("name") for r in pending(store) if r.get("evtName") == "Web Page Viewed"]
    assert "Page 1" in names and "Page 2" in names


def track_call(n: int) -> dict[str, Any]:
    return {"type": "track", "event": "E", "userId": f"u{n}", "messageId": f"t{n}"}


def test_origins_are_remembered_within_bounds(redis_url: str, store: Store) -> None:
    from pipeline.collector.core import MAX_ORIGINS_REMEMBERED

    collector = Collector(settings_for(redis_url), store)
    body = orjson.dumps(
        {**track(1), "writeKey": "wrong"}
    )  # refused: the origin is checked first all the same
    long = "https://" + "a" * 10_000 + ".test"  # a header may be 32 KB
    assert collector.prepare("/v1/t", {"origin": long}, body).status == 401  # type: ignore[union-attr]
    assert collector._origins == {}  # not kept
    for n in range(MAX_ORIGINS_REMEMBERED + 5):
        collector.prepare("/v1/t", {"origin": f"https://o{n}.evil.test"}, body)
    assert len(collector._origins) <= MAX_ORIGINS_REMEMBERED
    assert collector._allowed_anywhere(SHOP) and not collector._allowed_anywhere("https://evil.test")


def test_after_the_settings_change_the_new_collectors_enqueue_waits_for_the_old_ones(
    redis_url: str, store: Store
) -> None:
    import asyncio

    from pipeline.collector.app import GroupCommit
    from pipeline.collector.core import OK

    old, new = Collector(settings_for(redis_url), store), Collector(settings_for(redis_url), store)
    out: list[str] = []
    release = asyncio.Event()

    def stub(name: str) -> Any:
        async def held(integration: str, requests: list[Prepared], client: Any) -> Any:
            out.append(name)
            await release.wait()
            out.append(f"{name} ended")
            return OK

        return held

    old.queue_many_async = stub("old")  # type: ignore[method-assign]
    new.queue_many_async = stub("new")  # type: ignore[method-assign]

    async def run() -> list[int]:
        commits = GroupCommit()
        commits.redis = object()  # the asyncio path (its client is never used here)
        first = commits.submit(old, accepted(old, "/v1/t", {**track(1), "writeKey": KEY}))
        for _ in range(3):
            await asyncio.sleep(0)
        later = commits.submit(new, accepted(new, "/v1/t", {**track(2), "writeKey": KEY}))
        for _ in range(3):
            await asyncio.sleep(0)
        assert out == ["old"]  # the same integration: it waits, whichever Collector prepared it
        release.set()
        return [a.status for a in await asyncio.gather(first, later)]

    assert asyncio.run(run()) == [200, 200]
    assert out == ["old", "old ended", "new", "new ended"]
