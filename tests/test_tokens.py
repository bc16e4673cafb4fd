"""Push tokens (context.device.token -> token records) and the event allow / deny lists."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from pipeline.collector.core import Collector
from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.events import validate_event
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator, Faults
from pipeline.mapping import MAPPED, Mapper
from pipeline.store import Store
from pipeline.tokens import push_token
from tests.helpers import (
    ACC,
    PASS,
    dead_letters,
    deliver_through,
    emulator_records,
    environment,
    pending,
    run_cli,
)

NOW = 1_800_000_000
SUB = {"endpoint": "https://fcm.googleapis.com/fcm/send/abc123", "keys": {"p256dh": "BNc1", "auth": "tBH"}}


def call(device: dict[str, Any] | None = None, os_name: str | None = None, **fields: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"traits": {"email": "a@example.com"}}
    if device is not None:
        context["device"] = device
    if os_name is not None:
        context["os"] = {"name": os_name}
    return {"type": "identify", "userId": "u1", "anonymousId": "anon-1", "messageId": "m1",
            "traits": {"email": "a@example.com"}, "context": context, **fields}  # fmt: skip


CASES = [
    # name, call, integration settings, token record expected (or None), a warning containing
    ("android device type", call({"token": "fcm-tok", "type": "android"}), {},
     {"type": "token", "tokenData": {"id": "fcm-tok", "type": "fcm"}, "objectId": "anon-1"}, None),
    ("ios from context.os.name", call({"token": "apns-tok"}, os_name="iOS"), {},
     {"type": "token", "tokenData": {"id": "apns-tok", "type": "apns"}, "objectId": "anon-1"}, None),
    ("web push subscription", call({"token": SUB}), {},
     {"type": "token", "tokenData": {"id": SUB["endpoint"], "type": "chrome", "keys": SUB["keys"]},
      "objectId": "anon-1"}, None),
    ("no objectId", {**call({"token": "t", "type": "android"}), "anonymousId": None}, {},
     None, "needs an objectId"),
    ("per-call override", call({"token": "t", "type": "android"},
                               integrations={"CleverTap": {"deviceTokenType": "gcm"}}), {},
     {"type": "token", "tokenData": {"id": "t", "type": "gcm"}, "objectId": "anon-1"}, None),
    ("per-integration type", call({"token": "t"}), {"CLEVERTAP_DEVICE_TOKEN_TYPE": "wns"},
     {"type": "token", "tokenData": {"id": "t", "type": "wns"}, "objectId": "anon-1"}, None),
    ("objectId from userId", call({"token": "t", "type": "ios"}), {"CLEVERTAP_TOKEN_OBJECT_ID": "userId"},
     {"type": "token", "tokenData": {"id": "t", "type": "apns"}, "objectId": "u1"}, None),
    ("unknown device", call({"token": "t", "type": "toaster"}), {}, None, "its type is unknown"),
    ("bad override", call({"token": "t"}, integrations={"CleverTap": {"deviceTokenType": "sms"}}), {},
     None, "'sms' is not a token type"),
    ("subscription without keys", call({"token": {"endpoint": "https://x"}}), {}, None, "keys.p256dh"),
    ("chrome without keys", call({"token": "t"}, integrations={"CleverTap": {"deviceTokenType": "chrome"}}),
     {}, None, "needs its keys"),
    ("a number is no token", call({"token": 12345, "type": "android"}), {}, None, "must be a string"),
    ("no token", call({"type": "android"}), {}, None, None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "raw", "extra", "token", "warning"), CASES, ids=[c[0] for c in CASES])
def test_a_calls_device_token_maps_to_a_token_record(
    name: str, raw: dict[str, Any], extra: dict[str, str], token: dict[str, Any] | None, warning: str | None
) -> None:
    event, errors = validate_event(raw)
    assert event is not None, errors
    config = load_settings(environment(**cast(Any, extra))).integration("default")
    result = Mapper(config).map(event, None, NOW)
    assert result.status == MAPPED  # the identify itself goes, whatever becomes of its token
    assert result.records[0]["type"] == "profile"
    tokens = [r for r in result.records if r["type"] == "token"]
    assert tokens == ([token] if token else [])
    if token is not None:  # the type first: how assemble.lua tells token records apart
        assert orjson.dumps(tokens[0]).startswith(b'{"type":"token"')
    if warning is None:
        assert not [w for w in result.warnings if "token" in w]
    else:
        assert any(warning in w and "no token record sent" in w for w in result.warnings), result.warnings


def test_a_track_carries_its_token_too_and_a_filtered_call_none() -> None:
    track = {"type": "track", "event": "App Opened", "userId": "u1", "anonymousId": "a1",
             "context": {"device": {"token": "t1", "type": "android"}}}  # fmt: skip
    config = load_settings(environment()).integration("default")
    event, _ = validate_event(track)
    assert event is not None
    assert [r["type"] for r in Mapper(config).map(event, None, NOW).records] == ["event", "token"]
    config = load_settings(environment(CLEVERTAP_CONSENT_CATEGORIES="marketing")).integration("default")
    assert Mapper(config).map(event, None, NOW).records == []  # no consent: nothing at all


def test_a_warning_never_rejects_the_event_even_with_invalid_fields_reject() -> None:
    config = load_settings(environment(CLEVERTAP_INVALID_FIELDS="reject")).integration("default")
    event, _ = validate_event({**call({"token": "t", "type": "toaster"})})
    assert event is not None
    assert Mapper(config).map(event, None, NOW).status == MAPPED


def test_push_token_alone_says_none_for_a_call_without_one() -> None:
    assert push_token({"context": {}}, None, "anonymousId") == (None, None)
    assert push_token({"context": {"device": "x"}}, None, "anonymousId") == (None, None)


def identifies(n: int, start: int = 0, token_run: str = "") -> list[dict[str, Any]]:
    return [
        {"type": "identify", "userId": f"u{i}", "anonymousId": f"anon-{i}", "messageId": f"id{token_run}{i}",
         "traits": {"email": f"user{i}@example.com"},
         "context": {"device": {"token": f"fcm-{i}", "type": "android"}}}
        for i in range(start, start + n)
    ]  # fmt: skip


def test_250_tokens_go_as_three_token_requests_of_at_most_100_beside_the_profiles(
    redis_url: str, store: Store
) -> None:
    with Emulator({ACC: PASS}, seed=3) as emu:
        d = deliver_through(emu.url, redis_url, store, identifies(250))
        assert d.ingested is not None and d.ingested.records == 500
        stats = emu.state.stats()
        assert stats["token_requests"] == 3 and stats["max_tokens_per_request"] <= 100
        assert stats["token_records"] == 250 and stats["token_mixed_requests"] == 0
        stored = emulator_records(emu.url)
        tokens = [r for r in stored if r["type"] == "token"]
        assert sorted(r["tokenData"]["id"] for r in tokens) == sorted(f"fcm-{i}" for i in range(250))
        assert {r["objectId"] for r in tokens} == {f"anon-{i}" for i in range(250)}
        assert len([r for r in stored if r["type"] == "profile"]) == 250
        assert dead_letters(store) == []
        assert store.stats("default")["delivered"] == 500

        # the same tokens again within the de-duplication window (new messageIds): profiles only
        again = deliver_through(emu.url, redis_url, store, identifies(250, token_run="-2"))
        assert again.ingested is not None and again.ingested.records == 250
        assert emu.state.stats()["token_records"] == 250
        assert int(store.stats("default")["tokens_repeated"]) == 250
        assert int(store.stats("default")["tokens_queued"]) == 250


def test_the_emulator_checks_token_records_with_codes_530_to_535(redis_url: str, store: Store) -> None:
    import requests

    with Emulator({ACC: PASS}, Faults()) as emu:
        good = {"type": "token", "tokenData": {"id": "t", "type": "fcm"}, "objectId": "o"}
        records = [
            good,
            {**good, "objectId": ""},
            {**good, "tokenData": "t"},
            {**good, "tokenData": {"type": "fcm"}},
            {**good, "tokenData": {"id": "t"}},
            {**good, "tokenData": {"id": "t", "type": "sms"}},
            {**good, "tokenData": {"id": "t", "type": "chrome"}},
        ]
        headers = {"X-CleverTap-Account-Id": ACC, "X-CleverTap-Passcode": PASS}
        answer = requests.post(emu.url + "/1/upload", json={"d": records}, headers=headers, timeout=10).json()
        assert answer["processed"] == 1
        assert [u["code"] for u in answer["unprocessed"]] == [530, 531, 532, 533, 534, 535]
        many = requests.post(emu.url + "/1/upload", json={"d": [good] * 101}, headers=headers, timeout=10)
        assert many.status_code == 400 and "100 token records" in many.json()["error"]


# ------------------------------------------------------------------------------------ events lists


def tracks() -> list[dict[str, Any]]:
    base = {"userId": "u1", "context": {"traits": {"email": "a@example.com"}}}
    return [
        {**base, "type": "track", "event": "Order Completed", "messageId": "t1",
         "properties": {"order_id": "o1", "total": 5}},
        {**base, "type": "track", "event": "Debug Ping", "messageId": "t2"},
        {**base, "type": "page", "name": "Home", "messageId": "t3"},
        {**base, "type": "identify", "messageId": "t4", "traits": {"email": "a@example.com"}},
    ]  # fmt: skip


def test_an_allow_list_filters_the_rest_by_their_arriving_name_and_never_an_identify(
    redis_url: str, store: Store
) -> None:
    settings = load_settings(environment(redis_url, CLEVERTAP_EVENTS_ALLOW="Order Completed, page"))
    result = ingest(tracks(), settings=settings, store=store)
    assert (result.accepted, result.filtered, result.rejected) == (3, 1, 0)
    assert sorted(r.get("evtName", r["type"]) for r in pending(store)) == [
        "Charged",
        "Web Page Viewed",
        "profile",
    ]
    assert int(store.stats("default")["events_listed_out"]) == 1
    assert dead_letters(store) == []


def test_a_deny_list_filters_its_names_with_the_reason_in_preview(redis_url: str) -> None:
    env = environment(redis_url, process=True, CLEVERTAP_EVENTS_DENY="Debug Ping")
    lines = b"\n".join(orjson.dumps(e) for e in tracks())
    out = run_cli("preview", "-", env=env, input=lines)
    assert out.returncode == 0, out.stderr
    seen = [orjson.loads(x) for x in out.stdout.splitlines()]
    assert [x["outcome"] for x in seen] == ["mapped", "filtered", "mapped", "mapped"]
    assert seen[1]["reason"] == "event 'Debug Ping' is in events_deny"


def test_the_collector_filters_by_the_lists_too(redis_url: str, store: Store) -> None:
    key = "wk-test-0123456789abcdef"
    settings = load_settings(environment(redis_url, CLEVERTAP_WRITE_KEY=key, CLEVERTAP_EVENTS_DENY="page"))
    collector = Collector(settings, store)
    answer = collector.handle("/v1/batch", {}, orjson.dumps({"batch": tracks(), "writeKey": key}))
    assert answer.status == 200
    assert sorted(r.get("evtName", r["type"]) for r in pending(store)) == ["Charged", "Debug Ping", "profile"]
    assert int(store.stats("default")["filtered"]) == 1


def test_only_one_of_the_two_lists_and_its_error_names_it() -> None:
    with pytest.raises(
        ConfigError, match="CLEVERTAP_EVENTS_DENY: give at most one of events_allow or events_deny"
    ):
        load_settings(environment(CLEVERTAP_EVENTS_ALLOW="a", CLEVERTAP_EVENTS_DENY="b"))


def test_tokens_left_out_are_counted(redis_url: str, store: Store) -> None:
    settings = load_settings(environment(redis_url))
    bad = {**identifies(1)[0], "anonymousId": None}
    result = ingest([bad], settings=settings, store=store)
    assert result.accepted == 1 and [r["type"] for r in pending(store)] == ["profile"]
    assert int(store.stats("default")["tokens_left_out"]) == 1
    assert any("needs an objectId" in " ".join(w.reasons) for w in result.warnings)


def test_forgetting_a_user_takes_their_token_records_from_pending_and_from_batches(
    redis_url: str, store: Store
) -> None:
    from pipeline.delivery import Deliverer
    from pipeline.forget import Forgetter, State, Who
    from tests.helpers import Dispatched

    settings = load_settings(
        environment(
            redis_url,
            CLEVERTAP_TOKEN_OBJECT_ID="userId",
            CLEVERTAP_BATCH_SIZE="4",
            CLEVERTAP_FLUSH_INTERVAL="60",
        )
    )
    ingest(identifies(2), settings=settings, store=store)  # cut: one batch of 2 profiles, one of 2 tokens
    Deliverer(settings, store, Dispatched()).assemble()
    ingest(identifies(2, token_run="-b", start=0)[:1], settings=settings, store=store)  # u0 again, pending
    ingest([{**identifies(1, start=0)[0], "messageId": "x", "context": {"device": {"token": "fcm-0b",
            "type": "android"}}}], settings=settings, store=store)  # fmt: skip
    assert any(r["type"] == "token" and r["objectId"] == "u0" for r in pending(store))
    forgetter = Forgetter(settings, store)
    rid = forgetter.ask(Who(user_ids=("u0",)))
    assert forgetter.run(rid, delete=False) == State.DELETING
    batches = [cast(bytes, store.r.get(k)) for k in store.r.keys(store.key("default", "batch:*"))]
    left = [orjson.loads(r) for batch in batches for r in batch.split(b"\n") if r]
    left += [
        orjson.loads(r) for r in store.r.lrange(store.key("default", "pending"), 0, -1) if r
    ]  # '': forgotten
    assert not [r for r in left if r.get("objectId") == "u0"], left
    assert [r["objectId"] for r in left if r["type"] == "token"] == ["u1"]


def test_a_device_token_moving_to_another_user_is_sent_again_within_the_window(
    redis_url: str, store: Store
) -> None:
    settings = load_settings(environment(redis_url, CLEVERTAP_TOKEN_OBJECT_ID="userId"))
    device = {"token": "shared-tablet", "type": "ios"}

    def on(user: str, n: int) -> dict[str, Any]:
        traits = {"email": f"{user}@x.io"}
        return {"type": "identify", "userId": user, "messageId": f"dev-{n}", "traits": traits,
                "context": {"device": device}}  # fmt: skip

    ingest([on("a", 1), on("a", 2), on("b", 3), on("a", 4)], settings=settings, store=store)
    owners = [r["objectId"] for r in pending(store) if r["type"] == "token"]
    assert owners == ["a", "b", "a"]  # the same owner again: not sent; another owner: sent
    assert int(store.stats("default")["tokens_repeated"]) == 1
