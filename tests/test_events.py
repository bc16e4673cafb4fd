from __future__ import annotations

from typing import Any

import pytest

from pipeline.events import validate_event


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ([1, 2], "event: must be a JSON object, got list"),
        ({}, "type: required (one of track, page, screen, identify, alias, group)"),
        ({"type": "merge"}, "type: 'merge' is not one of track, page, screen, identify, alias, group"),
        ({"type": "track"}, "event: required for track, a non-empty string"),
        ({"type": "track", "event": "  "}, "event: required for track, a non-empty string"),
        ({"type": "page", "name": 5}, "name: must be a string, got int"),
        ({"type": "track", "event": "X", "userId": {"a": 1}}, "userId: must be a string, got dict"),
        ({"type": "track", "event": "X", "properties": [1]}, "properties: must be an object, got list"),
        ({"type": "identify", "traits": "x"}, "traits: must be an object, got str"),
        (
            {"type": "track", "event": "X", "context": {"consent": {"categories": "marketing"}}},
            "context.consent.categories: must be a list of category names",
        ),
        (
            {"type": "track", "event": "X", "context": {"consent": {"categoryPreferences": {"m": "yes"}}}},
            "context.consent.categoryPreferences.m: must be true or false",
        ),
    ],
)
def test_invalid_events_are_reported_with_the_field(event: Any, reason: str) -> None:
    parsed, errors = validate_event(event)
    assert parsed is None
    assert reason in errors


def test_a_bad_email_trait_is_a_warning_not_a_rejection() -> None:
    parsed, errors = validate_event(
        {"type": "track", "event": "X", "userId": "u1", "context": {"traits": {"email": 5}}}
    )
    assert errors == [] and parsed is not None and parsed.email is None
    assert parsed.warnings == ["context.traits.email: must be a string, got int: ignored"]


def test_all_problems_are_reported_together() -> None:
    _, errors = validate_event({"type": "track", "userId": [], "timestamp": "soon", "properties": 3})
    assert len(errors) == 4


def test_unknown_keys_are_ignored_and_numeric_user_ids_become_strings() -> None:
    event, errors = validate_event(
        {"type": "track", "event": "X", "userId": 42, "integrations": {"All": True}}
    )
    assert errors == [] and event is not None and event.user_id == "42"
