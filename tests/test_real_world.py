"""Real SDK traffic: events shaped as the Segment and RudderStack SDKs send them map to full profiles and
clean events; one bad field never sinks a record; anonymous, alias and group calls are filtered, not
dead-lettered. The pre-flight's profile formats are held against the emulator's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import IntegrationConfig, load_settings
from pipeline.events import validate_event
from pipeline.local.emulator import Emulator, Faults, check_record
from pipeline.local.sample import SPEC_PAYLOAD, SPEC_PURCHASE
from pipeline.mapping import ANONYMOUS, FILTERED, MAPPED, REJECTED, Mapper, MapResult
from pipeline.store import Store
from tests.helpers import (
    ACC,
    PASS,
    dead_letters,
    deliver_through,
    emulator_records,
    environment,
    run_cli,
)

NOW = 1_800_000_000


def integration(**extra: Any) -> IntegrationConfig:
    return load_settings(environment(**extra)).integration("default")


def map_one(event: dict[str, Any], **extra: Any) -> MapResult:
    parsed, errors = validate_event(event)
    assert parsed is not None, errors
    return Mapper(integration(**extra)).map(parsed, None, NOW)


def profile_of(traits: dict[str, Any], where: str = "context", **extra: Any) -> MapResult:
    event: dict[str, Any] = {"type": "identify", "userId": "u1", "timestamp": 1706540000}
    if where == "context":
        event["context"] = {"traits": traits}
    else:
        event["traits"] = traits
    return map_one(event, **extra)


# --------------------------------------------------------------------- events as the SDKs send them

#: A RudderStack Android SDK identify: traits only in context.traits, with the SDK's own keys beside them.
RUDDER_MOBILE_IDENTIFY = {
    "type": "identify",
    "userId": "user-42",
    "anonymousId": "8d872292709c6fbe",
    "messageId": "1643788562-b5bd0e1a-6f2b-4a5e-8e7f-31d5c1a9f0aa",
    "originalTimestamp": "2024-01-29T14:53:20.000Z",
    "context": {
        "traits": {
            "anonymousId": "8d872292709c6fbe",
            "userId": "user-42",
            "id": "user-42",
            "email": "jane.doe@example.com",
            "firstName": "Jane",
            "lastName": "Doe",
            "phone": "+1 415 555 0100",
            "gender": "Female",
            "birthday": "1990-05-17",
            "plan": "premium",
        },
        "app": {"name": "Shop", "version": "1.0"},
        "library": {"name": "com.rudderstack.android.sdk.core", "version": "1.20.0"},
        "os": {"name": "Android", "version": "14"},
    },
}

#: A Segment web identify: traits at the top, with a US phone without its country code.
SEGMENT_WEB_IDENTIFY = {
    "type": "identify",
    "userId": "97980cfea0067",
    "anonymousId": "507f191e810c19729de860ea",
    "messageId": "ajs-next-1706540000000-7c11c6a1",
    "timestamp": "2024-01-29T14:53:20Z",
    "traits": {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "phone": "(415) 555-0101",
        "plan": "premium",
        "logins": 5,
        "createdAt": "2015-02-23T22:28:55.111Z",
    },
    "context": {"library": {"name": "analytics.js", "version": "2.11.1"}, "ip": "8.8.8.8"},
}

#: A web page view before sign-in: an anonymousId and nothing else identifying.
ANONYMOUS_PAGE = {
    "type": "page",
    "name": "Home",
    "anonymousId": "507f191e810c19729de860ea",
    "messageId": "ajs-next-1706540001000-1",
    "timestamp": "2024-01-29T14:53:21Z",
    "properties": {"path": "/", "url": "https://shop.example.com/", "title": "Shop"},
}

SCREEN = {
    "type": "screen",
    "name": "Checkout",
    "userId": "user-42",
    "messageId": "screen-1",
    "timestamp": 1706540002,
    "properties": {"step": 2},
}

ALIAS = {"type": "alias", "previousId": "507f191e810c19729de860ea", "userId": "user-42", "messageId": "a-1"}
GROUP = {
    "type": "group",
    "groupId": "acme",
    "userId": "user-42",
    "messageId": "g-1",
    "traits": {"name": "Acme Inc", "employees": 100},
}


def test_a_mobile_identify_with_context_traits_makes_a_full_profile() -> None:
    result = map_one(RUDDER_MOBILE_IDENTIFY)
    assert result.status == MAPPED and result.warnings == []
    assert result.records == [
        {
            "type": "profile",
            "identity": "jane.doe@example.com",
            "ts": 1706540000,
            "profileData": {
                "Email": "jane.doe@example.com",
                "Phone": "+14155550100",
                "Gender": "F",
                "DOB": "$D_642902400",  # 1990-05-17T00:00:00Z
                "Name": "Jane Doe",
                # the SDK's identifiers (userId, anonymousId, id) are not custom properties
                "plan": "premium",
            },
        }
    ]
    assert result.identity_update == ("user-42", "jane.doe@example.com")


def test_a_phone_without_country_code_uses_the_default_country_code_or_is_left_out() -> None:
    without = map_one(SEGMENT_WEB_IDENTIFY)
    data = without.records[0]["profileData"]
    assert without.status == MAPPED and "Phone" not in data and without.dropped == ["Phone"]
    assert data == {
        "Name": "Peter Gibbons",
        "Email": "peter@example.com",
        "plan": "premium",
        "logins": 5,
        "createdAt": "2015-02-23T22:28:55.111Z",
    }
    (warning,) = without.warnings
    assert warning == (
        "traits.phone: '(415) 555-0101' has no country code (CleverTap wants +<country code><number>, code "
        "516; set default_country_code to add one): left out of the profile"
    )
    with_default = map_one(SEGMENT_WEB_IDENTIFY, CLEVERTAP_DEFAULT_COUNTRY_CODE="+1")
    assert with_default.records[0]["profileData"]["Phone"] == "+14155550101" and with_default.warnings == []
    strict = map_one(SEGMENT_WEB_IDENTIFY, CLEVERTAP_INVALID_FIELDS="reject")
    assert strict.status == REJECTED and strict.reasons[0].startswith("traits.phone: '(415) 555-0101'")


@pytest.mark.parametrize(
    ("anonymous", "status", "identity"),
    [
        ("filter", FILTERED, None),
        ("object_id", MAPPED, "507f191e810c19729de860ea"),
        ("reject", REJECTED, None),
    ],
)
def test_anonymous_page_views(anonymous: str, status: Any, identity: str | None) -> None:
    result = map_one(ANONYMOUS_PAGE, CLEVERTAP_ANONYMOUS=anonymous)
    assert result.status == status
    if status == FILTERED:
        assert result.reasons == [ANONYMOUS] == ["anonymous: no email or userId"]
    if identity:
        (record,) = result.records
        assert record["objectId"] == identity and record["evtName"] == "Web Page Viewed"
        assert record["evtData"] == {
            "path": "/",
            "url": "https://shop.example.com/",
            "title": "Shop",
            "name": "Home",
        }


def test_screen_maps_like_page() -> None:
    (record,) = map_one(SCREEN).records
    assert record == {
        "type": "event",
        "objectId": "user-42",
        "ts": 1706540002,
        "evtName": "Screen Viewed",
        "evtData": {"step": 2, "name": "Checkout"},
    }
    # (renamed through the integration's events table: test_profile_mapping_is_data_overridable_...)


@pytest.mark.parametrize("call", [ALIAS, GROUP])
def test_alias_and_group_are_filtered_not_dead_lettered(call: dict[str, Any]) -> None:
    result = map_one(call)
    assert result.status == FILTERED and result.reasons == [f"{call['type']}: not sent to CleverTap"]


def test_traits_merge_with_the_calls_own_traits_winning() -> None:
    event = {
        "type": "identify",
        "userId": "u1",
        "traits": {"plan": "gold", "email": "top@example.com"},
        "context": {"traits": {"plan": "silver", "email": "ctx@example.com", "city": "Leeds"}},
    }
    data = map_one(event).records[0]["profileData"]
    assert data == {"Email": "top@example.com", "plan": "gold", "city": "Leeds"}


@pytest.mark.parametrize(
    ("traits", "name"),
    [
        ({"name": "Full Name", "firstName": "A", "lastName": "B"}, "Full Name"),
        ({"firstName": "Ann", "lastName": "Lee"}, "Ann Lee"),
        ({"first_name": "Ann", "last_name": "Lee"}, "Ann Lee"),
        ({"firstname": "Ann", "lastname": "Lee"}, "Ann Lee"),
        ({"firstName": "Ann"}, "Ann"),
        ({"last_name": "Lee"}, "Lee"),
    ],
)
def test_name_from_name_else_first_and_last_in_their_common_spellings(
    traits: dict[str, Any], name: str
) -> None:
    data = profile_of(traits).records[0]["profileData"]
    assert data == {"Name": name}


@pytest.mark.parametrize(
    ("trait", "value", "key", "sent"),
    [
        ("gender", "m", "Gender", "M"),
        ("gender", "MALE", "Gender", "M"),
        ("gender", "Female", "Gender", "F"),
        ("gender", " f ", "Gender", "F"),
        ("gender", "non-binary", "Gender", None),
        ("gender", 1, "Gender", None),
        ("birthday", "1990-05-17", "DOB", "$D_642902400"),
        ("dateOfBirth", "1965-03-02", "DOB", "$D_-152582400"),
        ("birthday", 642902400, "DOB", "$D_642902400"),
        ("birthday", 642902400000, "DOB", "$D_642902400"),
        ("birthday", "1990-05-17T00:00:00+00:00", "DOB", "$D_642902400"),
        ("birthday", "1990-02-30", "DOB", None),
        ("birthday", "someday", "DOB", None),
        ("employed", True, "Employed", "Y"),
        ("employed", False, "Employed", "N"),
        ("married", True, "Married", "Y"),
        ("married", "no", "Married", "N"),
        ("married", "maybe", "Married", None),
        ("education", "graduate", "Education", "Graduate"),
        ("education", "School", "Education", "School"),
        ("education", "PhD", "Education", None),
        ("customerType", "Platinum", "Customer Type", "Platinum"),
        ("customer_type", "Gold", "Customer Type", "Gold"),
        ("avatar", "https://cdn.example.com/a.png", "Photo", "https://cdn.example.com/a.png"),
        ("avatar", "a.png", "Photo", None),
        ("email", "not-an-email", "Email", None),
        ("phone", "+44 20 7946 0958", "Phone", "+442079460958"),
        ("phone", "0044 20 7946 0958", "Phone", "+442079460958"),
        ("MSG-email", False, "MSG-email", False),
        ("msgPush", True, "MSG-push", True),
        ("msg_sms", "false", "MSG-sms", False),
        ("msgWhatsapp", "sometimes", "MSG-whatsapp", None),
    ],
)
def test_each_builtin_profile_field_in_clevertaps_format(trait: str, value: Any, key: str, sent: Any) -> None:
    result = profile_of({trait: value}, where="top")
    data = result.records[0]["profileData"]
    if sent is None:
        assert result.status == MAPPED and data == {} and result.dropped == [key]
        (warning,) = result.warnings
        assert warning.startswith(f"traits.{trait}: {value!r}") and warning.endswith(
            "left out of the profile"
        )
        rejected = profile_of({trait: value}, where="top", CLEVERTAP_INVALID_FIELDS="reject")
        assert rejected.status == REJECTED and rejected.reasons[0].startswith(f"traits.{trait}:")
    else:
        assert data == {key: sent} and result.warnings == []
    # Every record the mapper sends passes the emulator's checks of CleverTap's formats.
    assert check_record(result.records[0], Faults()) is None


def test_identifiers_and_ts_are_not_custom_properties_and_ts_times_the_event() -> None:
    event = {
        "type": "track",
        "event": "Played",
        "userId": "u1",
        "properties": {"ts": 1706540000, "id": "x", "userId": "u1", "anonymousId": "a", "song": "s"},
    }
    (record,) = map_one(event).records
    assert record["ts"] == 1706540000 and record["evtData"] == {"song": "s"}
    own = map_one({**event, "timestamp": 1706549999})
    assert own.records[0]["ts"] == 1706549999  # the event's own timestamp wins
    bad = map_one({**event, "properties": {"ts": "soon", "song": "s"}})
    assert bad.records[0]["ts"] == NOW and bad.warnings == [
        "properties.ts: 'soon' is not a timestamp (epoch seconds): ignored"
    ]
    from_traits = map_one({"type": "identify", "userId": "u1", "traits": {"ts": 1706540000, "plan": "x"}})
    assert from_traits.records[0]["ts"] == 1706540000 and from_traits.records[0]["profileData"] == {
        "plan": "x"
    }


def test_the_spec_purchase_example_is_still_exact() -> None:
    result = map_one(SPEC_PURCHASE, CLEVERTAP_CONSENT_CATEGORIES="marketing")
    assert orjson.dumps({"d": result.records}) == orjson.dumps(SPEC_PAYLOAD)


def test_profile_mapping_is_data_overridable_per_integration(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(
        """
[integrations.default]
account_id = "ACC"
passcode = "p"
region = "eu1"
[integrations.default.events]
screen = "App Screen Viewed"
[integrations.default.profile]
"Customer Type" = ["tier"]
Photo = []
"Plan" = ["plan"]
"""
    )
    config = load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)}).integration("default")
    event, _ = validate_event(
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"tier": "Gold", "customerType": "Silver", "avatar": "https://x/a.png", "plan": "p"},
        }
    )
    assert event is not None
    data = Mapper(config).map(event, None, NOW).records[0]["profileData"]
    # tier feeds Customer Type now; customerType is a custom trait again; Photo is off (avatar passes as is)
    assert data == {
        "Customer Type": "Gold",
        "Plan": "p",
        "customerType": "Silver",
        "avatar": "https://x/a.png",
    }
    screen, _ = validate_event(SCREEN)
    assert (
        screen is not None
        and Mapper(config).map(screen, None, NOW).records[0]["evtName"] == "App Screen Viewed"
    )


# ---------------------------------------------------------------- the pre-flight against the emulator

_trait_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**45),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["m", "F", "female", "yes", "N", "college", "1990-01-01", "+14155550100", "a@b.co", "0"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            t: _trait_values
            for t in (
                "gender",
                "birthday",
                "employed",
                "married",
                "education",
                "customerType",
                "avatar",
                "email",
                "phone",
                "MSG-email",
                "msgPush",
                "name",
                "firstName",
                # named like CleverTap's own keys: custom traits that must still be in CleverTap's format
                "Gender",
                "Email",
                "DOB",
                "Age",
                "Items",
                "Phone",
            )
        },
    )
)
def test_whatever_traits_arrive_the_emulator_accepts_every_profile_sent(traits: dict[str, Any]) -> None:
    result = profile_of(traits, where="top", CLEVERTAP_DEFAULT_COUNTRY_CODE="+44")
    if result.status == MAPPED:
        assert check_record(result.records[0], Faults()) is None, (traits, result.records)


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("Gender", "Female", 514),
        ("Email", "nope", 515),
        ("Phone", "4155550100", 516),
        ("Employed", True, 517),
        ("Education", "PhD", 518),
        ("Married", "yes", 519),
        ("DOB", "1990-05-17", 520),
        ("MSG-push", "true", 512),
    ],
)
def test_the_emulator_refuses_builtin_fields_not_in_clevertaps_format(
    key: str, value: Any, code: int
) -> None:
    problem = check_record({"type": "profile", "identity": "a@b.co", "profileData": {key: value}}, Faults())
    assert problem is not None and problem[0] == code


# -------------------------------------------------------------------- through ingest, status, CLI


def test_sdk_traffic_delivers_with_no_dead_letter_noise(redis_url: str, store: Store) -> None:
    traffic: list[dict[str, Any]] = [
        RUDDER_MOBILE_IDENTIFY,
        SEGMENT_WEB_IDENTIFY,
        ANONYMOUS_PAGE,
        SCREEN,
        ALIAS,
        GROUP,
        {**SPEC_PURCHASE, "context": {"traits": {"email": "jane.doe@example.com"}}},
        {
            "type": "identify",
            "userId": "u7",
            "traits": {"email": "u7@example.com", "gender": "x", "education": "PhD"},
        },
    ]
    with Emulator({ACC: PASS}) as emu:
        delivery = deliver_through(emu.url, redis_url, store, traffic)
        result = delivery.ingested
        assert result is not None and result.counts() == {
            "accepted": 5, "filtered": 3, "duplicate": 0, "rejected": 0, "fields_dropped": 3, "held": 0
        }  # fmt: skip
        stored = emulator_records(emu.url)
    assert len(stored) == 5 and dead_letters(store) == []
    profiles = [r for r in stored if r["type"] == "profile"]
    assert {p["identity"] for p in profiles} == {
        "jane.doe@example.com",
        "peter@example.com",
        "u7@example.com",
    }
    stats = store.stats("default")
    assert stats["fields_dropped"] == 3 and stats["fields_dropped:Phone"] == 1
    assert stats["fields_dropped:Gender"] == 1 and stats["fields_dropped:Education"] == 1
    env = environment(redis_url, process=True)
    status = orjson.loads(run_cli("status", "--json", env=env).stdout)["integrations"]["default"]
    assert status["fields_dropped"] == 3 and status["filtered"] == 3
    assert status["fields_dropped_by_key"] == {"Education": 1, "Gender": 1, "Phone": 1}


def test_preview_and_ingest_report_the_fields_left_out(redis_url: str, store: Store) -> None:
    env = environment(redis_url, process=True)
    lines = b"\n".join(orjson.dumps(e) for e in (SEGMENT_WEB_IDENTIFY, ANONYMOUS_PAGE, ALIAS)) + b"\n"
    preview = [orjson.loads(x) for x in run_cli("preview", "-", env=env, input=lines).stdout.splitlines()]
    assert [p["outcome"] for p in preview] == ["mapped", "filtered", "filtered"]
    assert preview[0]["warnings"][0].startswith("traits.phone: '(415) 555-0101' has no country code")
    assert preview[1]["reason"] == "anonymous: no email or userId"
    assert preview[2]["reason"] == "alias: not sent to CleverTap"
    ingested = run_cli("ingest", "--json", "-", env=env, input=lines)
    assert orjson.loads(ingested.stdout.splitlines()[-1]) == {
        "accepted": 1, "filtered": 2, "duplicate": 0, "rejected": 0, "fields_dropped": 1, "held": 0
    }  # fmt: skip
    assert b"line 1: sent, but traits.phone: '(415) 555-0101' has no country code" in ingested.stderr
    assert store.dead_letter_count("default") == 0


def test_traits_named_like_builtin_keys_are_held_to_clevertaps_format() -> None:
    result = profile_of(
        {
            "Gender": "other",
            "Email": "nope",
            "DOB": "1990-01-01",
            "Age": "x",
            "Items": [{"a": 1}],
            "Married": "N",
        },
        where="top",
    )
    data = result.records[0]["profileData"]
    # DOB converted; Married already in format; the rest left out with a warning each; Items is no
    # special key in a profile (a nested list: stringified as any custom trait is)
    assert data == {"DOB": "$D_631152000", "Items": '[{"a":1}]', "Married": "N"}
    assert sorted(result.dropped) == ["Age", "Email", "Gender"]
    assert check_record(result.records[0], Faults()) is None


def test_fields_left_out_are_counted_by_builtin_key_or_as_custom() -> None:
    long_key = "k" * 200
    result = profile_of({long_key: 1, "x" * 130: 2, "gender": "n/a"}, where="top")
    assert sorted(result.dropped) == ["Gender", "custom", "custom"]
    assert all(len(w) < 300 for w in result.warnings)  # a key is quoted 60 characters at most


def test_over_256_custom_traits_the_rest_are_left_out_and_warnings_are_capped() -> None:
    traits = {f"t{n}": n for n in range(300)}
    result = profile_of(traits, where="top")
    assert len(result.records[0]["profileData"]) == 256 and result.dropped == ["custom"]
    assert "more than 256 custom profile keys" in result.warnings[0]
    many_bad = profile_of({f"b{n}": "x" * 600 for n in range(50)}, where="top")
    assert len(many_bad.warnings) == 20 and many_bad.warnings[-1] == "... and 31 more"
    assert profile_of(traits, where="top", CLEVERTAP_INVALID_FIELDS="reject").status == REJECTED


@pytest.mark.parametrize(
    "traits",
    [
        {"phone": "٠٧٧٠٠٩٠٠١٢٣"},  # Arabic-Indic digits
        {"birthday": "$D_١٢٣"},
        {"birthday": 10**400},
        {"birthday": "9" * 5000},
        {"avatar": "http://"},
        {"ts": 10**400},
        {"ts": "²"},
    ],
)
def test_odd_values_are_left_out_never_crash_or_sent_malformed(traits: dict[str, Any]) -> None:
    result = profile_of(traits, where="top", CLEVERTAP_DEFAULT_COUNTRY_CODE="+44")
    assert result.status == MAPPED, result.reasons
    assert check_record(result.records[0], Faults()) is None
    data = result.records[0]["profileData"]
    assert not ({"Phone", "DOB", "Photo"} & set(data))


def test_name_parts_must_be_text_and_name_can_be_turned_off(tmp_path: Path) -> None:
    assert profile_of({"firstName": {"a": 1}, "lastName": "  Lee "}).records[0]["profileData"] == {
        "Name": "Lee"
    }
    assert profile_of({"firstName": True}).records[0]["profileData"] == {}
    path = tmp_path / "p.toml"
    path.write_text(
        '[integrations.default]\naccount_id = "A"\npasscode = "p"\nregion = "eu1"\n'
        "[integrations.default.profile]\nName = []\n"
    )
    config = load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)}).integration("default")
    event, _ = validate_event({"type": "identify", "userId": "u", "traits": {"name": "N", "firstName": "A"}})
    assert event is not None  # Name off: its traits are custom traits like any other
    assert Mapper(config).map(event, None, NOW).records[0]["profileData"] == {"name": "N", "firstName": "A"}


def test_a_later_source_stands_in_for_a_bad_earlier_one() -> None:
    result = profile_of({"birthday": "soon", "dateOfBirth": "1990-05-17"}, where="top")
    assert result.records[0]["profileData"] == {"DOB": "$D_642902400"} and result.warnings == []


def test_reject_mode_rejects_what_drop_mode_ignores_with_a_warning() -> None:
    event = {"type": "track", "event": "X", "userId": "u1", "properties": {"ts": "soon"}}
    assert map_one(event).status == MAPPED
    rejected = map_one(event, CLEVERTAP_INVALID_FIELDS="reject")
    assert rejected.status == REJECTED and rejected.reasons[0].startswith("properties.ts: 'soon'")


def test_duplicates_do_not_count_fields_left_out(redis_url: str, store: Store) -> None:
    from pipeline.ingest import ingest

    settings = load_settings(environment(redis_url))
    first = ingest([SEGMENT_WEB_IDENTIFY, SEGMENT_WEB_IDENTIFY], settings=settings, store=store)
    assert (first.duplicate, first.fields_dropped, len(first.warnings)) == (1, 1, 1)
    again = ingest([SEGMENT_WEB_IDENTIFY], settings=settings, store=store)
    assert (again.duplicate, again.fields_dropped, again.warnings) == (1, 0, [])
    assert store.stats("default")["fields_dropped"] == 1
