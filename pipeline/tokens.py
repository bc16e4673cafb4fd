"""Push tokens: a call's ``context.device.token`` as a CleverTap token record (Upload Device Tokens).

Apps that send their events through a Segment or RudderStack SDK, not CleverTap's own, reach their users
with push only if CleverTap knows the device token. A call carrying one yields, beside its event or
profile record, ``{"type": "token", "objectId": ..., "tokenData": {"id": ..., "type": ...}}``:

* the type is the call's ``integrations.CleverTap.deviceTokenType``, else the integration's
  ``device_token_type``, else what the device says (``context.device.type`` or ``context.os.name``:
  android -> fcm, ios -> apns); a web push subscription (``PushSubscription.toJSON()``: ``endpoint`` and
  ``keys.p256dh`` / ``keys.auth``) is a chrome token that carries its keys;
* the objectId comes from ``token_object_id`` (the call's ``anonymousId`` by default): CleverTap requires
  one, so a call without it gets a warning and no token record; the event itself is never refused for
  its token.

Pure: no Redis, no clock. CleverTap takes at most 100 token records a request (``assemble.lua`` cuts them
into batches of their own, telling them by how their JSON begins: ``{"type":"token"``), and the enqueue
does not queue a device's token again within the de-duplication window unless its objectId changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline import constants as C

#: The device's type or OS name (lower case) -> CleverTap's token type.
TYPE_BY_OS = {"android": "fcm", "ios": "apns", "ipados": "apns", "tvos": "apns", "watchos": "apns"}
#: Longest token id taken (an FCM token is about 160 characters, a web push endpoint a few hundred).
MAX_TOKEN_CHARS = 4096
NO_RECORD = "no token record sent"


def push_token(
    raw: Mapping[str, Any], default_type: str | None, object_id_from: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The token record for the call ``raw`` and a warning: (record, None) when it carries a usable token,
    (None, warning) when it carries one that cannot be sent, (None, None) when it carries none."""
    context = raw.get("context")
    # dicts first: every call runs this, and an isinstance against the Mapping ABC is dear
    device = context.get("device") if type(context) is dict or isinstance(context, Mapping) else None
    if device is None:
        return None, None
    token = device.get("token") if type(device) is dict or isinstance(device, Mapping) else None
    if token is None or token == "":
        return None, None
    assert isinstance(device, Mapping) and isinstance(context, Mapping)
    keys: dict[str, str] | None = None
    if isinstance(token, Mapping):  # a web push subscription, as PushSubscription.toJSON() gives it
        endpoint, sub_keys = token.get("endpoint"), token.get("keys")
        p256dh = sub_keys.get("p256dh") if isinstance(sub_keys, Mapping) else None
        auth = sub_keys.get("auth") if isinstance(sub_keys, Mapping) else None
        if not (_text(endpoint) and _text(p256dh) and _text(auth)):
            return None, (
                "context.device.token: a web push subscription needs endpoint, keys.p256dh and keys.auth; "
                + NO_RECORD
            )
        token_id, keys = str(endpoint).strip(), {"p256dh": str(p256dh), "auth": str(auth)}
    elif isinstance(token, str) and token.strip():
        token_id = token.strip()
    else:
        return None, (
            f"context.device.token: must be a string or a web push subscription, got "
            f"{type(token).__name__}; {NO_RECORD}"
        )
    if len(token_id) > MAX_TOKEN_CHARS:
        return (
            None,
            f"context.device.token: {len(token_id)} characters, at most {MAX_TOKEN_CHARS}; {NO_RECORD}",
        )

    override = _call_override(raw.get("integrations"))
    if override is not None:
        kind, where = override.strip().lower(), "integrations.CleverTap.deviceTokenType"
    elif default_type is not None:
        kind, where = default_type, "device_token_type"
    elif keys is not None:
        kind, where = "chrome", "the web push subscription"
    else:
        os_ = context.get("os")
        said = _text(device.get("type")) or (_text(os_.get("name")) if isinstance(os_, Mapping) else None)
        found = TYPE_BY_OS.get((said or "").lower())
        if found is None:
            told = f"{said[:40]!r}" if said else "nothing"
            return None, (
                f"context.device.token: its type is unknown (context.device.type / context.os.name say "
                f"{told}, android or ios is understood; or set integrations.CleverTap.deviceTokenType, or "
                f"the integration's device_token_type); {NO_RECORD}"
            )
        kind, where = found, "the device"
    if kind not in C.TOKEN_TYPES:
        return None, f"{where}: {kind[:40]!r} is not a token type ({', '.join(C.TOKEN_TYPES)}); {NO_RECORD}"
    if kind == "chrome" and keys is None:
        return None, (
            "context.device.token: a chrome (web push) token needs its keys: send the subscription "
            f"(endpoint, keys.p256dh, keys.auth); {NO_RECORD}"
        )

    object_id = _object_id(raw, device, object_id_from)
    if object_id is None:
        return None, (
            f"context.device.token: CleverTap needs an objectId on a token record, and the call has no "
            f"{object_id_from} (token_object_id); {NO_RECORD}"
        )
    data: dict[str, Any] = {"id": token_id, "type": kind}
    if keys is not None and kind == "chrome":
        data["keys"] = keys
    # objectId before tokenData: forget's scripts read a record's top-level fields up to its first nested
    # object (lib/names.lua), so a forgotten objectId is found in pending records and batches
    return {"type": "token", "objectId": object_id, "tokenData": data}, None


def _call_override(integrations: Any) -> str | None:
    if not isinstance(integrations, Mapping):
        return None
    for name, value in integrations.items():
        if (
            isinstance(name, str)
            and name.replace(" ", "").lower() == "clevertap"
            and isinstance(value, Mapping)
        ):
            said = value.get("deviceTokenType")
            return said if isinstance(said, str) and said.strip() else None
    return None


def _object_id(raw: Mapping[str, Any], device: Mapping[str, Any], source: str) -> str | None:
    if source == "userId":
        value = raw.get("userId")
    elif source == "context.device.id":
        value = device.get("id")
    else:
        value = raw.get("anonymousId")
    return _text(value)


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None
