"""The mapping core, pure: no Redis, no clock."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from pipeline.config import IntegrationConfig, load_settings
from pipeline.events import parse_timestamp, validate_event
from pipeline.local.sample import SPEC_PAYLOAD, SPEC_PURCHASE
from pipeline.mapping import FILTERED, MAPPED, MISSING_IDENTITY, REJECTED, Mapper, MapResult
from tests.helpers import environment

NOW = 1_800_000_000


def integration(**extra: Any) -> IntegrationConfig:
    return load_settings(environment(**extra)).integration("default")


def map_one(event: dict[str, Any], known_email: str | None = None, **extra: Any) -> MapResult:
    parsed, errors = validate_event(event)
    assert parsed is not None, errors
    return Mapper(integration(**extra)).map(parsed, known_email, NOW)


def track(name: str, props: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "userId": "u1",
        "properties": props or {},
        "context": {"traits": {"email": "a@example.com"}},
        **fields,
    }


def test_spec_purchase_example_maps_to_exactly_the_spec_payload() -> None:
    result = map_one(SPEC_PURCHASE, CLEVERTAP_CONSENT_CATEGORIES="marketing")
    assert result.status == MAPPED
    body = b'{"d":[' + b",".join(orjson.dumps(r) for r in result.records) + b"]}"
    assert orjson.loads(body) == SPEC_PAYLOAD
    # Same key order as the spec's payload, so the bytes read the same.
    assert body == orjson.dumps(SPEC_PAYLOAD)


@pytest.mark.parametrize(
    ("signal", "clevertap"),
    [
        ("Products Searched", "Searched"),
        ("Product Viewed", "Product Viewed"),
        ("Product Added to Wishlist", "Added to Wishlist"),
        ("Product Added", "Added to Cart"),
        ("Checkout Started", "Checkout Started"),
        ("Order Completed", "Charged"),
        ("Signed Up", "Signed Up"),
        ("Logged In", "Logged In"),
    ],
)
def test_every_default_preset_row(signal: str, clevertap: str) -> None:
    result = map_one(track(signal, {"query": "widgets"}))
    assert result.records[0]["evtName"] == clevertap


def test_page_maps_to_web_page_viewed_with_its_name() -> None:
    event = {
        "type": "page",
        "name": "Home",
        "userId": "u1",
        "properties": {"path": "/"},
        "context": {"traits": {"email": "a@example.com"}},
    }
    record = map_one(event).records[0]
    assert record["evtName"] == "Web Page Viewed"
    assert record["evtData"] == {"path": "/", "name": "Home"}


def test_unmapped_track_events_pass_through_or_are_dropped() -> None:
    assert map_one(track("Video Played")).records[0]["evtName"] == "Video Played"
    dropped = map_one(track("Video Played"), CLEVERTAP_UNMAPPED="drop")
    assert dropped.status == FILTERED and "unmapped" in dropped.reasons[0]


def test_charged_falls_back_to_total_and_passes_other_properties_through() -> None:
    data = map_one(
        track("Order Completed", {"order_id": "O1", "total": 10.5, "currency": "EUR", "coupon": "X"})
    ).records[0]["evtData"]
    assert data == {"Charged ID": "O1", "Amount": 10.5, "Currency": "EUR", "coupon": "X"}
    both = map_one(track("Order Completed", {"revenue": 9, "total": 10})).records[0]["evtData"]
    assert both == {"Amount": 9, "total": 10}


def test_integration_overrides_rename_events_and_properties(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[integrations.default]\naccount_id="A"\npasscode="p"\nregion="us1"\n'
        '[integrations.default.events]\n"Video Played" = "Video Watched"\n"Order Completed" = "Charged"\n'
        '[integrations.default.properties."Video Played"]\nvideo_id = "Video ID"\n'
        '[integrations.default.properties."Order Completed"]\ntotal = "Amount"\n'
    )
    mapper = Mapper(load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)}).integration("default"))
    ev, _ = validate_event(track("Video Played", {"video_id": "v1", "seconds": 3}))
    assert ev is not None
    record = mapper.map(ev, None, NOW).records[0]
    assert record["evtName"] == "Video Watched"
    assert record["evtData"] == {"Video ID": "v1", "seconds": 3}
    ev, _ = validate_event(track("Order Completed", {"revenue": 1, "total": 2}))
    assert ev is not None
    assert mapper.map(ev, None, NOW).records[0]["evtData"] == {"Amount": 2, "revenue": 1}


@pytest.mark.parametrize(
    ("consent", "outcome"),
    [
        ({"categoryPreferences": {"marketing": True}}, MAPPED),
        ({"categories": ["marketing", "analytics"]}, MAPPED),
        ({"categoryPreferences": {"marketing": False, "analytics": True}}, FILTERED),
        ({"categories": ["analytics"]}, FILTERED),
        (None, FILTERED),
    ],
)
def test_consent_gate(consent: dict[str, Any] | None, outcome: str) -> None:
    event = track("Product Viewed")
    if consent is not None:
        event["context"]["consent"] = consent
    assert map_one(event, CLEVERTAP_CONSENT_CATEGORIES="marketing").status == outcome
    # Without configured categories there is no gate.
    assert map_one(event).status == MAPPED


def test_every_listed_category_must_be_granted() -> None:
    event = track("Product Viewed")
    event["context"]["consent"] = {"categories": ["marketing"]}
    result = map_one(event, CLEVERTAP_CONSENT_CATEGORIES="marketing,analytics")
    assert result.status == FILTERED and result.reasons == ["consent not granted for analytics"]


def test_identity_resolution_order() -> None:
    with_email = map_one(track("X")).records[0]
    assert with_email["identity"] == "a@example.com" and "objectId" not in with_email
    bare = {"type": "track", "event": "X", "userId": "u9"}
    assert map_one(bare, known_email="known@example.com").records[0]["identity"] == "known@example.com"
    object_only = map_one(bare).records[0]
    assert object_only["objectId"] == "u9" and "identity" not in object_only
    anonymous = {"type": "track", "event": "X", "anonymousId": "anon"}
    assert map_one(anonymous).status == FILTERED  # traffic never meant for CleverTap (anonymous = filter)
    strict = map_one(anonymous, CLEVERTAP_ANONYMOUS="reject")
    assert strict.status == REJECTED and strict.reasons == [MISSING_IDENTITY]
    nobody = map_one({"type": "track", "event": "X"})
    assert nobody.status == REJECTED and nobody.reasons == [MISSING_IDENTITY]


def test_identity_is_not_hashed() -> None:
    event = track("X")
    event["context"]["traits"]["email"] = "Jane.Doe+tag@Example.com"
    assert map_one(event).records[0]["identity"] == "Jane.Doe+tag@Example.com"


@pytest.mark.parametrize(
    ("fields", "ts"),
    [
        ({"timestamp": "2024-01-29T14:53:20Z"}, 1706540000),
        ({"timestamp": "2024-01-29T15:53:20.999+01:00"}, 1706540000),
        ({"timestamp": 1706540000}, 1706540000),
        ({"timestamp": 1706540000123}, 1706540000),
        ({"timestamp": "1706540000"}, 1706540000),
        ({"originalTimestamp": "2024-01-29T14:53:20Z", "sentAt": 1}, 1706540000),
        ({"sentAt": "2024-01-29T14:53:20Z"}, 1706540000),
        ({"receivedAt": 1706540000}, 1706540000),
        ({}, NOW),
    ],
)
def test_ts_is_epoch_seconds_from_the_first_timestamp_field(fields: dict[str, Any], ts: int) -> None:
    assert map_one(track("X", **fields)).records[0]["ts"] == ts


@pytest.mark.parametrize("bad", ["2024-01-29T14:53:20", "yesterday", "2024-13-01T00:00:00Z", True, -5, [1]])
def test_unparseable_timestamp_is_a_rejection_naming_the_value(bad: Any) -> None:
    assert parse_timestamp(bad) is None
    event, errors = validate_event(track("X", timestamp=bad))
    assert event is None and errors[0].startswith(f"timestamp: {bad!r}")


def test_identify_remembers_the_email_and_sends_a_profile() -> None:
    event = {
        "type": "identify",
        "userId": "u1",
        "timestamp": 1706540000,
        "traits": {
            "email": "jane@example.com",
            "firstName": "Jane",
            "lastName": "Doe",
            "phone": "+44 (20) 7946-0958",
            "plan": "pro",
        },
    }
    result = map_one(event)
    assert result.identity_update == ("u1", "jane@example.com")
    assert result.records == [
        {
            "type": "profile",
            "identity": "jane@example.com",
            "ts": 1706540000,
            "profileData": {
                "Email": "jane@example.com",
                "Phone": "+442079460958",
                "Name": "Jane Doe",  # from firstName and lastName, which are not custom properties as well
                "plan": "pro",
            },
        }
    ]
    quiet = map_one(event, CLEVERTAP_SEND_PROFILES="false")
    assert (
        quiet.status == MAPPED and quiet.records == [] and quiet.identity_update == ("u1", "jane@example.com")
    )


def test_phone_without_country_code_is_left_out_or_a_rejection_naming_the_field() -> None:
    event = {"type": "identify", "userId": "u1", "traits": {"email": "j@x.com", "phone": "555-1234"}}
    kept = map_one(event)
    assert kept.status == MAPPED and kept.records[0]["profileData"] == {"Email": "j@x.com"}
    assert kept.warnings[0].startswith("traits.phone: '555-1234' has no country code") and kept.dropped == [
        "Phone"
    ]
    result = map_one(event, CLEVERTAP_INVALID_FIELDS="reject")
    assert result.status == REJECTED and result.reasons[0].startswith("traits.phone:")


def test_nested_properties_are_stringified_or_rejected() -> None:
    event = track("X", {"dims": {"w": 1}, "tags": ["a", "b"]})
    assert map_one(event).records[0]["evtData"] == {"dims": '{"w":1}', "tags": '["a","b"]'}
    rejected = map_one(event, CLEVERTAP_NESTED="reject")
    assert rejected.status == REJECTED
    assert [r.split(":")[0] for r in rejected.reasons] == ["properties.dims", "properties.tags"]


def test_limits_are_rejections_naming_the_field() -> None:
    long_value = map_one(track("X", {"description": "é" * 300}))
    assert long_value.reasons == ["properties.description: value is 600 bytes, CleverTap allows at most 512"]
    assert map_one(track("X", {"ok": "é" * 256})).status == MAPPED  # exactly 512 bytes
    long_key = map_one(track("X", {"k" * 121: 1}))
    assert long_key.status == REJECTED and "121 characters" in long_key.reasons[0]
    many = map_one(track("X", {f"p{i}": i for i in range(11)}), CLEVERTAP_MAX_EVENT_PROPERTIES="10")
    assert many.reasons == ["properties: 11 properties, CleverTap allows at most 10 (max_event_properties)"]
    stringified_too_long = map_one(track("X", {"blob": {"k": "v" * 600}}))
    assert stringified_too_long.reasons[0].startswith("properties.blob: value is")


@pytest.mark.parametrize("name", ["App Launched", "notification  viewed", "UTM Visited"])
def test_reserved_system_event_names_are_rejected(name: str) -> None:
    result = map_one(track(name))
    assert result.status == REJECTED and "reserved" in result.reasons[0]


def test_forbidden_characters_in_event_names_are_rejected() -> None:
    result = map_one(track("video.played: now"))
    assert result.status == REJECTED and "'.'" in result.reasons[0] and "':'" in result.reasons[0]


def test_items_must_be_a_list_of_objects_and_nested_item_values_follow_the_nested_rule() -> None:
    bad = map_one(track("Order Completed", {"products": "SKU-A"}))
    assert bad.reasons == ["properties.products: Items must be a list of objects"]
    event = track("Order Completed", {"products": [{"sku": "A", "tags": ["x"]}]})
    before = copy.deepcopy(event)
    items = map_one(event).records[0]["evtData"]["Items"]
    assert items == [{"sku": "A", "tags": '["x"]'}]
    assert event == before  # the caller's event is never modified


def test_every_reason_is_reported_not_just_the_first() -> None:
    result = map_one(track("App Launched", {"a": "x" * 600, "b": {"c": 1}}), CLEVERTAP_NESTED="reject")
    assert len(result.reasons) == 3


def test_null_properties_are_left_out() -> None:
    assert map_one(track("X", {"a": None, "b": 1})).records[0]["evtData"] == {"b": 1}
