"""Validation of incoming Datafly/Segment-style events: pure, fast, and every error names its field.

The hot path of ingest runs here once per event, so this is plain Python over the decoded JSON rather
than a marshmallow schema: a lean marshmallow schema validates the spec's purchase event at about
22,000/s on this machine, below the 25,000 events/s the whole ingest path must reach (see docs/performance.md,
"Why events are not validated with marshmallow"). Configuration, which is read once, uses marshmallow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipeline import constants as C

EVENT_TYPES = ("track", "page", "screen", "identify", "alias", "group")
#: Call types that carry no user event or profile for CleverTap: valid Segment, filtered at mapping.
NOT_FOR_CLEVERTAP = frozenset(("alias", "group"))
_TIMESTAMP_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
#: Epoch values at or above this are milliseconds (1e11 seconds is the year 5138).
#: CleverTap takes ``ts`` in epoch seconds, ten digits at most (up to 2286-11-20). A number from there on is
#: read as milliseconds (ten digits of milliseconds are the first months of 1970: nobody's events).
_MS_THRESHOLD = C.MAX_EPOCH_S


class Event:
    """A validated event, reduced to what mapping needs."""

    __slots__ = (
        "anonymous_id",
        "consent",
        "email",
        "message_id",
        "name",
        "properties",
        "raw",
        "traits",
        "ts",
        "type",
        "user_id",
        "warnings",
    )

    def __init__(
        self,
        raw: Mapping[str, Any],
        type: str,
        name: str | None,
        user_id: str | None,
        anonymous_id: str | None,
        message_id: str | None,
        ts: int | None,
        properties: Mapping[str, Any],
        traits: Mapping[str, Any],
        email: str | None,
        consent: frozenset[str] | None,
        warnings: list[str] | None = None,
    ) -> None:
        self.raw = raw
        self.type = type
        self.name = name
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self.message_id = message_id
        self.ts = ts
        self.properties = properties
        self.traits = traits
        self.email = email
        self.consent = consent
        self.warnings = warnings  # what was ignored without sinking the event (a bad properties.ts)


def parse_timestamp(value: Any) -> int | None:
    """Epoch seconds from ISO 8601 with a zone, or epoch seconds / milliseconds; None if unparseable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():  # ASCII digits only: int() refuses some Unicode ones
            if len(text) > 20:
                return None
            number = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                return None
            if parsed.tzinfo is None or "T" not in text.upper():
                return None
            seconds = int(parsed.timestamp())
            return seconds if 0 <= seconds < C.MAX_EPOCH_S else None
    else:
        return None
    if (isinstance(number, float) and math.isnan(number)) or number < 0:  # NaN, or before 1970
        return None
    if number >= _MS_THRESHOLD:
        number = number // 1000 if isinstance(number, int) else number / 1000  # no float of a huge int
    if number >= _MS_THRESHOLD:
        return None
    return int(number)


def _id(value: Any, path: str, errors: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    errors.append(f"{path}: must be a string, got {type(value).__name__}")
    return None


def _object(value: Any, path: str, errors: list[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    errors.append(f"{path}: must be an object, got {type(value).__name__}")
    return {}


def _consent(consent: Mapping[str, Any], errors: list[str]) -> frozenset[str] | None:
    if not consent:
        return None
    granted: set[str] = set()
    prefs = consent.get("categoryPreferences")
    if prefs is not None:
        if not isinstance(prefs, dict):
            errors.append("context.consent.categoryPreferences: must be an object of category: true/false")
        else:
            for cat, allowed in prefs.items():
                if not isinstance(allowed, bool):
                    errors.append(f"context.consent.categoryPreferences.{cat}: must be true or false")
                elif allowed:
                    granted.add(cat)
    cats = consent.get("categories")
    if cats is not None:
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            errors.append("context.consent.categories: must be a list of category names")
        else:
            granted.update(cats)
    if prefs is None and cats is None:
        return None
    return frozenset(granted)


_EMPTY: Mapping[str, Any] = {}


def validate_event(obj: Any) -> tuple[Event | None, list[str]]:
    """Return ``(event, [])`` for a valid event, else ``(None, reasons)`` with every problem found.

    Written for speed (it runs once per event): common shapes take a direct path, and the helpers are
    reached only for unusual values.
    """
    if type(obj) is not dict:
        return None, [f"event: must be a JSON object, got {type(obj).__name__}"]
    errors: list[str] = []
    get = obj.get
    etype = get("type")
    name: str | None = None
    if etype == "track":
        raw_name = get("event")
        if type(raw_name) is str and raw_name.strip():
            name = raw_name
        else:
            errors.append("event: required for track, a non-empty string")
    elif etype in ("page", "screen"):  # a tuple: etype may be anything, even unhashable
        raw_name = get("name")
        if raw_name is None or type(raw_name) is str:
            name = raw_name
        else:
            errors.append(f"name: must be a string, got {type(raw_name).__name__}")
    elif etype not in EVENT_TYPES:
        if etype is None:
            errors.append(f"type: required (one of {', '.join(EVENT_TYPES)})")
        else:
            errors.append(f"type: {etype!r} is not one of {', '.join(EVENT_TYPES)}")

    user_id = get("userId")
    if type(user_id) is not str:
        user_id = _id(user_id, "userId", errors)
    elif not user_id:
        user_id = None
    anonymous_id = get("anonymousId")
    if type(anonymous_id) is not str:
        anonymous_id = _id(anonymous_id, "anonymousId", errors)
    message_id = get("messageId")
    if type(message_id) is not str:
        message_id = _id(message_id, "messageId", errors)

    ts: int | None = None
    for key in _TIMESTAMP_FIELDS:
        value = get(key)
        if value is None:
            continue
        ts = parse_timestamp(value)
        if ts is None:
            errors.append(
                f"{key}: {value!r} is not a timestamp (ISO 8601 with a time zone, or epoch seconds or ms)"
            )
        break

    properties: Mapping[str, Any] = _EMPTY
    traits: Mapping[str, Any] = _EMPTY
    if etype == "identify":
        traits = get("traits") or _EMPTY
        if type(traits) is not dict:
            traits = _object(traits, "traits", errors)
    elif etype != "group":  # a group's traits describe the group (a company), not the user
        properties = get("properties") or _EMPTY
        if type(properties) is not dict:
            properties = _object(properties, "properties", errors)
    context = get("context") or _EMPTY
    if type(context) is not dict:
        context = _object(context, "context", errors)
    ctx_traits = context.get("traits") or _EMPTY
    if type(ctx_traits) is not dict:
        ctx_traits = _object(ctx_traits, "context.traits", errors)

    email: str | None = None
    warnings: list[str] | None = None
    for path, source in (("traits.email", traits), ("context.traits.email", ctx_traits)):
        value = source.get("email")
        if not value:
            continue
        if type(value) is not str:  # not the identity: the event goes on without it (one bad field)
            warnings = [*(warnings or []), f"{path}: must be a string, got {type(value).__name__}: ignored"]
        elif email is None:
            email = value.strip()
    # Mobile SDKs send traits in context.traits; the call's own traits win where both have a key.
    if ctx_traits:
        traits = {**ctx_traits, **traits} if traits else ctx_traits
    if ts is None and ("ts" in properties or "ts" in traits):  # the event's time, when it has no other
        for path, source in (("properties.ts", properties), ("traits.ts", traits)):
            value = source.get("ts")
            if value is None:
                continue
            ts = parse_timestamp(value)
            if ts is None:
                warnings = [
                    *(warnings or []),
                    f"{path}: {value!r:.60} is not a timestamp (epoch seconds): ignored",
                ]
            break
    consent_raw = context.get("consent")
    consent = None
    if consent_raw is not None:
        consent = _consent(_object(consent_raw, "context.consent", errors), errors)
    if errors:
        return None, errors
    assert isinstance(etype, str)
    event = Event(
        obj, etype, name, user_id, anonymous_id, message_id, ts, properties, traits, email, consent, warnings
    )
    return event, []
