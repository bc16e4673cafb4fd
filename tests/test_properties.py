"""Bad input, property-based: whatever JSON arrives, ingest answers with records or a rejection with a reason,
never an exception; and every record the pre-flight lets through, the emulator (written apart from the
pipeline, from CleverTap's rules) stores."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import IntegrationConfig, load_settings
from pipeline.events import validate_event
from pipeline.ingest import Ingestor
from pipeline.local.emulator import Faults, check_record
from pipeline.mapping import FILTERED, MAPPED, REJECTED, Mapper
from pipeline.store import Store
from tests.helpers import environment

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
TIMESTAMPS = (
    st.integers(min_value=-10, max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat())
    | st.sampled_from(["9999-12-31T23:59:59Z", "2024-01-29T14:53:20Z", "1706540000", "yesterday", ""])
)
NAMES = st.sampled_from(
    ["Order Completed", "Product Viewed", "Signed Up", "App Launched", "a.b", "Notification Viewed", ""]
) | st.text(max_size=30)
KEYS = st.text(max_size=130) | st.sampled_from(
    ["revenue", "currency", "products", "order_id", "Items", "email"]
)
PROPERTIES = st.dictionaries(KEYS, JSON | st.text(min_size=500, max_size=600), max_size=8)
EVENTS = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "page", "identify", "screen", "alias", "group", "bogus"]) | JSON},
    optional={
        "event": NAMES | JSON,
        "name": NAMES,
        "userId": st.text(max_size=20) | st.integers() | JSON,
        "anonymousId": st.text(max_size=20),
        "messageId": st.text(max_size=20) | st.integers(),
        "timestamp": TIMESTAMPS,
        "properties": PROPERTIES | JSON,
        "traits": st.dictionaries(
            st.sampled_from(["email", "name", "phone", "firstName", "lastName", "plan"]) | KEYS,
            JSON | st.sampled_from(["jane@example.com", "+14155550100", "0155 555", "Jane"]),
            max_size=6,
        )
        | JSON,
        "context": st.fixed_dictionaries(
            {},
            optional={
                "traits": st.fixed_dictionaries({}, optional={"email": st.text(max_size=20) | JSON}),
                "consent": JSON | st.just({"categoryPreferences": {"marketing": True}}),
            },
        )
        | JSON,
    },
)


def config(**extra: Any) -> IntegrationConfig:
    return load_settings(environment(**extra)).integration("default")


@settings(max_examples=400, deadline=None)
@given(EVENTS | JSON)
def test_any_json_maps_to_records_or_a_rejection_with_reasons(raw: Any) -> None:
    event, errors = validate_event(raw)
    if event is None:
        assert errors and all(isinstance(e, str) and e for e in errors)
        return
    result = Mapper(config()).map(event, None, 1706540000)
    assert result.status in (MAPPED, FILTERED, REJECTED)
    if result.status != MAPPED:
        assert result.reasons


@settings(max_examples=400, deadline=None)
@given(EVENTS)
def test_every_record_the_preflight_lets_through_the_emulator_stores(raw: Any) -> None:
    event, _ = validate_event(raw)
    if event is None:
        return
    for mapper in (Mapper(config()), Mapper(config(CLEVERTAP_NESTED="reject"))):
        result = mapper.map(event, None, 1706540000)
        for record in result.records:
            try:
                wire = orjson.loads(orjson.dumps(record))  # what the emulator receives
            except TypeError:
                pytest.fail(f"a mapped record cannot be encoded: {record!r}")
            assert check_record(wire, Faults()) is None, (raw, record)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENTS | JSON, min_size=1, max_size=12))
def test_ingest_never_raises_and_accounts_for_every_event(store: Store, batch: list[Any]) -> None:
    store.r.flushdb()
    result = Ingestor(store, config(CLEVERTAP_DEDUP_WINDOW="0")).ingest(batch)
    assert result.accepted + result.filtered + result.duplicate + result.rejected == len(batch)
    assert all(r.reasons for r in result.rejections)
    assert store.r.llen(store.key("default", "pending")) == result.records
