"""Mapping of validated events to CleverTap records, with pre-flight checks against CleverTap's limits.

Pure: no Redis, no clock (the caller passes ``now``), no I/O. The preset is data (``presets/*.json``);
an integration's ``events`` and ``properties`` overrides are merged on top of it once, in :class:`Mapper`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

import orjson

from pipeline import constants as C
from pipeline.config import IntegrationConfig
from pipeline.events import NOT_FOR_CLEVERTAP, Event
from pipeline.profile import RESERVED
from pipeline.tokens import push_token


class MapStatus(enum.StrEnum):
    """What became of one event."""

    MAPPED = "mapped"  # records to queue (none for an identify with send_profiles = false)
    FILTERED = "filtered"  # not meant for CleverTap (no consent, unmapped with unmapped = drop): counted
    REJECTED = "rejected"  # cannot be sent: a mapping dead letter with its reasons
    DUPLICATE = "duplicate"  # its messageId was accepted within the de-duplication window
    HELD = "held"  # anonymous, with anonymous = "hold": waits in Redis until an event says who it is


MAPPED, FILTERED, REJECTED, DUPLICATE, HELD = MapStatus
MISSING_IDENTITY = (
    "missing identity: no email (context.traits.email, traits.email, or an earlier identify for this "
    "userId) and no userId"
)
ANONYMOUS = "anonymous: no email or userId"
HELD_REASON = "anonymous: held until an identify (or any event) with this anonymousId says who it is"
NOT_SENT = "not sent to CleverTap"
#: Keys that identify a user or time an event rather than describe it: never custom properties.
NOT_PROPERTIES = frozenset(("userId", "anonymousId", "id", "ts"))
#: Warnings one event reports at most (the rest are counted in one more).
MAX_WARNINGS = 20
# A string of at most this many characters is at most 512 bytes in UTF-8 (4 bytes a character at most),
# so only longer strings need encoding to measure.
_SAFE_CHARS = C.MAX_VALUE_BYTES // 4
_NUMERIC = (int, float, bool)


#: How the reasons events_allow / events_deny give begin and end (counted apart: events_listed_out).
_LISTED = (" is not in events_allow", " is in events_deny")


def is_listed_out(reasons: list[str]) -> bool:
    """Whether ``reasons`` are an event list's (events_allow / events_deny)."""
    return len(reasons) == 1 and reasons[0].startswith("event ") and reasons[0].endswith(_LISTED)


class MapResult:
    """What one event became: a status, the records to queue, and reasons when filtered or rejected."""

    __slots__ = ("dropped", "identity_update", "reasons", "records", "status", "warnings")

    def __init__(
        self,
        status: MapStatus,
        records: list[dict[str, Any]] | None = None,
        reasons: list[str] | None = None,
        identity_update: tuple[str, str] | None = None,
        warnings: list[str] | None = None,
        dropped: list[str] | None = None,
    ) -> None:
        self.status = status
        self.records = records or []
        self.reasons = reasons or []
        self.identity_update = identity_update
        self.warnings = warnings or []  # what was left out of a record that was still sent, and why
        self.dropped = dropped or []  # the profile keys left out (status counts them by key)


_name_checks: dict[str, list[str]] = {}


def check_event_name(name: str) -> list[str]:
    """Reasons CleverTap would refuse the event name (memoised: an account has few distinct names)."""
    cached = _name_checks.get(name)
    if cached is not None:
        return list(cached)
    reasons = _check_event_name(name)
    if len(_name_checks) < 10_000:
        _name_checks[name] = reasons
    return list(reasons)


def _check_event_name(name: str) -> list[str]:
    reasons = []
    bad = sorted({ch for ch in name if ch in C.FORBIDDEN_EVENT_NAME_CHARS})
    if bad:
        reasons.append(
            f"event name {name!r}: contains {' '.join(repr(c) for c in bad)}, which CleverTap does not allow "
            "in event names"
        )
    if name.replace(" ", "").lower() in C.RESERVED_EVENT_NAMES:
        reasons.append(f"event name {name!r}: a CleverTap system event name, reserved (code 513)")
    return reasons


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if kind is str and len(value) > _SAFE_CHARS:
        size = len(value.encode("utf-8"))
        if size > C.MAX_VALUE_BYTES:
            return f"value is {size} bytes, CleverTap allows at most {C.MAX_VALUE_BYTES}"
    elif kind is int and not -(2**63) <= value < 2**63:
        return "an integer beyond 64 bits, which JSON readers (CleverTap's among them) do not take"
    elif kind is float and not math.isfinite(value):
        return f"{value} is not a number JSON can carry"
    return None


def _as_json_text(value: Any) -> str | None:
    """A nested value as JSON text; None when JSON cannot carry it (an integer beyond 64 bits, or nesting
    deeper than orjson writes: 254 levels)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return None


class Mapper:
    """The mapping rules of one integration, compiled once from its preset and overrides."""

    def __init__(self, config: IntegrationConfig) -> None:
        self.config = config
        self.event_names: dict[str, str] = {**config.preset.events, **config.event_renames}
        self.required_consent = frozenset(config.consent_categories)
        self.stringify = config.nested == "stringify"
        self.max_props = config.max_event_properties
        props: dict[str, dict[str, tuple[str, ...]]] = {
            ev: dict(targets) for ev, targets in config.preset.properties.items()
        }
        for ev, renames in config.property_renames.items():
            targets = props.setdefault(ev, {})
            for source, target in renames.items():
                for tgt, sources in list(targets.items()):  # a source feeds one target only
                    if source in sources:
                        targets[tgt] = tuple(s for s in sources if s != source)
                targets[target] = (source,)
        self.property_maps: dict[str, list[tuple[str, tuple[str, ...]]]] = {
            ev: [(t, s) for t, s in targets.items() if s] for ev, targets in props.items()
        }
        # Profile keys <- trait names: the preset's, with the integration's overrides replacing a key's
        # sources (an empty list turns a key off).
        profile = {**config.preset.profile, **config.profile_fields}
        self.profile_map: list[tuple[str, tuple[str, ...]]] = [(t, s) for t, s in profile.items() if s]
        parts = config.preset.name_parts
        # Name = [] in the integration's profile table turns Name off, its first/last-name parts too.
        name_off = "Name" in config.profile_fields and not config.profile_fields["Name"]
        self.first_names: tuple[str, ...] = () if name_off else tuple(parts.get("first", ()))
        self.last_names: tuple[str, ...] = () if name_off else tuple(parts.get("last", ()))
        # Trait names that feed a profile key are never custom properties as well.
        self.profile_sources = (
            frozenset(src for _, sources in self.profile_map for src in sources)
            | frozenset(self.first_names)
            | frozenset(self.last_names)
            | NOT_PROPERTIES
        )
        self.drop_invalid = config.invalid_fields == "drop"
        self.events_allow = frozenset(config.events_allow) if config.events_allow else None
        self.events_deny = frozenset(config.events_deny)

    # ------------------------------------------------------------------------------------------ events

    def map(self, event: Event, known_email: str | None, now: int) -> MapResult:
        result = self._map(event, known_email, now)
        if result.status == MAPPED:
            token, warning = push_token(event.raw, self.config.device_token_type, self.config.token_object_id)
            if token is not None:  # queued after the call's own record (assemble.lua batches it apart)
                result.records.append(token)
            if warning is not None:  # the event still goes: only its token is left out
                result.warnings = [*result.warnings, warning]
        return result

    def _map(self, event: Event, known_email: str | None, now: int) -> MapResult:
        if event.type in NOT_FOR_CLEVERTAP:
            return MapResult(FILTERED, reasons=[f"{event.type}: {NOT_SENT}"])
        integrations = event.raw.get("integrations")
        if isinstance(integrations, dict) and integrations and _turned_off(integrations):
            return MapResult(FILTERED, reasons=["integrations: CleverTap is turned off for this call"])
        if event.type != "identify" and (self.events_allow is not None or self.events_deny):
            listed = self._listed_out(event)
            if listed is not None:
                return MapResult(FILTERED, reasons=[listed])
        if self.required_consent:
            granted = event.consent
            if granted is None or not self.required_consent <= granted:
                missing = sorted(self.required_consent - (granted or frozenset()))
                return MapResult(FILTERED, reasons=[f"consent not granted for {', '.join(missing)}"])
        email = event.email or known_email
        if email:
            ident_key, ident = "identity", email
        elif event.user_id:
            ident_key, ident = "objectId", event.user_id
        elif event.anonymous_id and self.config.anonymous == "object_id":
            ident_key, ident = "objectId", event.anonymous_id
        elif event.anonymous_id and self.config.anonymous == "filter":
            return MapResult(FILTERED, reasons=[ANONYMOUS])
        elif event.anonymous_id and self.config.anonymous == "hold":
            return MapResult(HELD, reasons=[HELD_REASON])
        else:
            return MapResult(REJECTED, reasons=[MISSING_IDENTITY])
        ts = event.ts if event.ts is not None else now
        warnings = list(event.warnings) if event.warnings else []
        if warnings and not self.drop_invalid:  # invalid_fields = reject: nothing is left out quietly
            return MapResult(REJECTED, reasons=warnings)

        if event.type == "identify":
            update = (event.user_id, event.email) if event.user_id and event.email else None
            if not self.config.send_profiles:
                return MapResult(MAPPED, identity_update=update, warnings=warnings)
            reasons: list[str] = []
            dropped: list[str] = []
            profile = self._profile_data(event.traits, reasons, warnings, dropped)
            if reasons:
                return MapResult(REJECTED, reasons=reasons)
            record = {"type": "profile", ident_key: ident, "ts": ts, "profileData": profile}
            return MapResult(MAPPED, [record], identity_update=update, warnings=warnings, dropped=dropped)

        if event.type in ("page", "screen"):
            source_name = event.type
            evt_name = self.event_names.get(source_name) or (
                "Web Page Viewed" if source_name == "page" else "Screen Viewed"
            )
            props: Mapping[str, Any] = event.properties
            if event.name and "name" not in props:
                props = {**props, "name": event.name}
        else:
            source_name = event.name or ""
            mapped_name = self.event_names.get(source_name)
            if mapped_name is None:
                if self.config.unmapped == "drop":
                    return MapResult(FILTERED, reasons=[f"unmapped event {source_name!r} (unmapped = drop)"])
                mapped_name = source_name
            evt_name = mapped_name
            props = event.properties
        reasons = check_event_name(evt_name)
        evt_data = self._evt_data(source_name, props, reasons)
        if reasons:
            return MapResult(REJECTED, reasons=reasons)
        return MapResult(
            MAPPED,
            [{"type": "event", ident_key: ident, "ts": ts, "evtName": evt_name, "evtData": evt_data}],
            warnings=warnings,
        )

    def _listed_out(self, event: Event) -> str | None:
        """Why events_allow / events_deny filter the event (by the name it arrived with: a track's event,
        "page" or "screen"), or None when it may go on."""
        name = event.type if event.type in ("page", "screen") else (event.name or "")
        if self.events_allow is not None and name not in self.events_allow:
            return f"event {name[:200]!r} is not in events_allow"
        if name in self.events_deny:
            return f"event {name[:200]!r} is in events_deny"
        return None

    # ------------------------------------------------------------------------------------- properties

    def _evt_data(self, source_event: str, props: Mapping[str, Any], reasons: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pmap = self.property_maps.get(source_event)
        used: set[str] = set()
        if pmap:
            for target, sources in pmap:
                for source in sources:
                    value = props.get(source)
                    if value is not None:
                        used.add(source)
                        self._put(out, target, f"properties.{source}", value, reasons)
                        break
        for key, value in props.items():
            if value is None or key in used or key in out or key in NOT_PROPERTIES:
                continue
            kind = type(value)
            # Fast path for the common case: a short key and a scalar value that cannot be over 512 bytes.
            if (
                ((kind is str and len(value) <= _SAFE_CHARS) or kind in _NUMERIC)
                and len(key) <= C.MAX_KEY_CHARS
                and key != C.ITEMS_KEY
            ):
                out[key] = value
            else:
                self._put(out, key, f"properties.{key}", value, reasons)
        if len(out) > self.max_props:
            reasons.append(
                f"properties: {len(out)} properties, CleverTap allows at most {self.max_props} "
                "(max_event_properties)"
            )
        return out

    def _profile_data(
        self, traits: Mapping[str, Any], reasons: list[str], warnings: list[str], dropped: list[str]
    ) -> dict[str, Any]:
        """CleverTap's built-in profile keys from the traits that feed them (in CleverTap's formats), then
        every other trait as a custom property (a trait named like a built-in key in CleverTap's format).
        A value that cannot be sent is left out with a warning (``invalid_fields = "drop"``) or rejects the
        record (``"reject"``)."""
        out: dict[str, Any] = {}
        problems: list[str] = []
        for target, sources in self.profile_map:
            for source in sources:
                value = traits.get(source)
                if value is None or value == "":
                    continue
                self._put_profile(out, target, f"traits.{_short(source)}", value, problems)
                if target in out:  # a later source is not needed, and earlier bad ones are not lost
                    problems.clear()
                    break
            if problems:
                self._invalid(target, problems, reasons, warnings, dropped)
        if "Name" not in out and self.first_names:
            parts = [
                next((_text(traits.get(k)) for k in names if _text(traits.get(k))), None)
                for names in (self.first_names, self.last_names)
            ]
            if any(parts):
                out["Name"] = " ".join(p for p in parts if p)
        custom = 0
        for key, value in traits.items():
            if value is None or key in self.profile_sources or key in out:
                continue
            if key not in RESERVED and key != "Age":
                custom += 1
                if custom > C.MAX_PROFILE_CUSTOM_KEYS:
                    problems.append(
                        f"traits: more than {C.MAX_PROFILE_CUSTOM_KEYS} custom profile keys (CleverTap's "
                        f"limit); {_short(key)!r} and the rest"
                    )
                    self._invalid("custom", problems, reasons, warnings, dropped)
                    break
            self._put_profile(out, key, f"traits.{_short(key)}", value, problems)
            if problems:
                self._invalid(key, problems, reasons, warnings, dropped)
        if len(warnings) > MAX_WARNINGS:
            warnings[MAX_WARNINGS - 1 :] = [f"... and {len(warnings) - MAX_WARNINGS + 1} more"]
        return out

    def _put_profile(self, out: dict[str, Any], key: str, path: str, value: Any, problems: list[str]) -> None:
        """One profile key: a built-in one converted to CleverTap's format, any other as a custom property
        (never Items, which only events have)."""
        convert = RESERVED.get(key)
        if convert is not None:
            converted, problem = convert(value, self.config.default_country_code)
            if problem is not None:
                problems.append(f"{path}: {_shown(value)} {problem}")
                return
            value = converted
        elif key == "Age" and not (type(value) is int and 0 <= value <= 150):
            problems.append(
                f"{path}: {_shown(value)} is not an age, a whole number 0-150 (CleverTap code 520)"
            )
            return
        self._put(out, key, path, value, problems, profile=True)

    def _invalid(
        self, key: str, problems: list[str], reasons: list[str], warnings: list[str], dropped: list[str]
    ) -> None:
        """A profile value that cannot be sent: a warning and the key left out, or a reason to reject.
        Dropped keys are counted by name for CleverTap's built-in keys, as ``custom`` for the rest (trait
        names are anyone's: counting each would grow without bound)."""
        if self.drop_invalid:
            warnings.extend(f"{p}: left out of the profile" for p in problems)
            dropped.append(key if key in RESERVED or key == "Age" else "custom")
        else:
            reasons.extend(problems)
        problems.clear()

    def _put(
        self, out: dict[str, Any], key: str, path: str, value: Any, reasons: list[str], profile: bool = False
    ) -> None:
        if len(key) > C.MAX_KEY_CHARS:
            reasons.append(f"{path[:60]}...: key is {len(key)} characters, CleverTap allows at most 120")
            return
        if key == C.ITEMS_KEY and not profile:
            before = len(reasons)
            value = self._items(value, path, reasons)
            if len(reasons) > before:
                return
        elif isinstance(value, (dict, list)):
            if self.stringify:
                value = _as_json_text(value)
                if value is None:
                    reasons.append(
                        f"{path}: holds an integer beyond 64 bits, or is nested hundreds of levels deep: "
                        "JSON readers do not take it"
                    )
                    return
            else:
                reasons.append(
                    f"{path}: nested {'object' if isinstance(value, dict) else 'list'}; CleverTap allows "
                    "nested values only in Items (nested = reject)"
                )
                return
        problem = _scalar_problem(value)
        if problem:
            reasons.append(f"{path}: {problem}")
            return
        out[key] = value

    def _items(self, value: Any, path: str, reasons: list[str]) -> list[Any]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            reasons.append(f"{path}: Items must be a list of objects")
            return []
        items: list[Any] = []
        for n, item in enumerate(value):
            fixed = item
            for key, val in item.items():
                if isinstance(val, (dict, list)):
                    if not self.stringify:
                        reasons.append(f"{path}[{n}].{key}: nested value inside Items (nested = reject)")
                        continue
                    if fixed is item:
                        fixed = dict(item)  # never modify the caller's event
                    text = _as_json_text(val)
                    if text is None:
                        reasons.append(f"{path}[{n}].{key}: holds an integer beyond 64 bits")
                        continue
                    fixed[key] = text
                problem = _scalar_problem(fixed[key])
                if problem:
                    reasons.append(f"{path}[{n}].{key}: {problem}")
            items.append(fixed)
        return items


def _turned_off(integrations: dict[str, Any]) -> bool:
    """Segment's ``integrations`` object: ``{"CleverTap": false}``, or ``{"All": false}`` without
    ``"CleverTap": true`` (or its options object), keeps the call from this destination."""
    for name, value in integrations.items():
        if name.replace(" ", "").lower() == "clevertap":
            return value is False
    return integrations.get("All") is False


def _short(key: str) -> str:
    """A key as a path quotes it: at most 60 characters."""
    return key if len(key) <= 60 else key[:57] + "..."


def _text(value: Any) -> str | None:
    """Stripped text from a string or a number; None for anything else or blank."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _shown(value: Any) -> str:
    """A value as a warning quotes it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
