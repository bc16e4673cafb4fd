"""Configuration: marshmallow schemas validated once into a frozen :class:`Settings`.

Two sources, one schema:

* the environment (``CLEVERTAP_ACCOUNT_ID``, ``CLEVERTAP_PASSCODE``, ``CLEVERTAP_REGION``, ...) defines the
  integration named ``default``;
* a TOML file named by ``CLEVERTAP_PIPELINE_CONFIG`` defines any number of ``[integrations.<name>]``.

Every problem is reported at once, each with its key path (or environment variable) and what is allowed.
The passcode is held in a :class:`~pipeline.secret.Secret` that never prints.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate, validates_schema

from pipeline import constants as C
from pipeline import formats
from pipeline.errors import ConfigError, UnknownIntegration
from pipeline.presets import Preset, available_presets, load_preset
from pipeline.secret import Secret

ENV_CONFIG_FILE = "CLEVERTAP_PIPELINE_CONFIG"
#: The key that encrypts the passcodes of integrations saved in the console (Fernet); every process that
#: serves them (workers, the collector, the CLI) needs it. Without it, console integrations are not loaded.
ENV_CONSOLE_KEY = "CLEVERTAP_CONSOLE_KEY"
#: The console's login password.
ENV_CONSOLE_PASSWORD = "CLEVERTAP_CONSOLE_PASSWORD"  # noqa: S105 - the variable's name, not a password
ENV_PREFIX = "CLEVERTAP_"


# ---------------------------------------------------------------------------------------------- schemas

# --------------------------------------------------------------------------------------------- settings
#
# Each setting is declared once, as a dataclass field whose metadata holds its marshmallow field (type,
# default, validation), its environment variable and, where the stored value differs from the validated
# one, the conversion. The schemas, the environment tables and ``public_dict`` are derived from these
# declarations, so adding a setting is a one-line change.


def setting(
    schema: fields.Field[Any],
    *,
    env: str | None = "",
    from_env: Callable[[str], Any] | None = None,
    convert: Callable[[Any], Any] | None = None,
    repr: bool = True,
) -> Any:
    """A configured field: ``schema`` validates it (and gives its default, ``load_default``), ``env`` names
    its environment variable ("" for ``CLEVERTAP_<NAME>``, None for none), ``from_env`` parses that
    variable's text, and ``convert`` turns the validated value into the stored one."""
    conv: Callable[[Any], Any] = convert or (lambda value: value)
    meta = {"schema": schema, "env": env, "from_env": from_env, "convert": conv}
    default = schema.load_default
    if default is missing:
        return field(metadata=meta, repr=repr)
    if callable(default):
        return field(default_factory=lambda: conv(default()), metadata=meta, repr=repr)
    return field(default=conv(default), metadata=meta, repr=repr)


def _comma_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


@dataclass(frozen=True)
class IntegrationConfig:
    """One integration: a CleverTap account to send to, and how its events are mapped and delivered."""

    name: str
    account_id: str = setting(
        fields.String(
            required=True,
            validate=validate.Regexp(formats.ACCOUNT_ID, error="must be 1-64 letters, digits, '-' or '_'"),
        )
    )
    passcode: Secret = setting(fields.String(validate=formats.header_safe), convert=Secret, repr=False)
    region: str = setting(
        fields.String(
            required=True, validate=validate.OneOf(C.REGIONS, error="must be one of " + ", ".join(C.REGIONS))
        )
    )
    passcode_env: str | None = setting(
        fields.String(
            load_default=None,
            validate=validate.Regexp(formats.ENV_NAME, error="must be an environment variable name"),
        ),
        env=None,
    )
    # The collector's write key: it authenticates an SDK and chooses the integration its events go to.
    write_key: Secret | None = setting(
        fields.String(load_default=None, allow_none=True, validate=formats.write_key),
        convert=lambda value: None if value is None else Secret(value),
        repr=False,
    )
    write_key_env: str | None = setting(
        fields.String(
            load_default=None,
            validate=validate.Regexp(formats.ENV_NAME, error="must be an environment variable name"),
        ),
        env=None,
    )
    preset: Preset = setting(fields.String(load_default="default"), convert=load_preset, repr=False)
    consent_categories: tuple[str, ...] = setting(
        fields.List(fields.String(validate=validate.Length(min=1)), load_default=()),
        from_env=_comma_list,
        convert=tuple,
    )
    api_url: str | None = setting(
        fields.String(load_default=None, allow_none=True, validate=formats.http_url)
    )
    batch_size: int = setting(
        fields.Integer(load_default=C.MAX_BATCH_SIZE, validate=formats.between(1, C.MAX_BATCH_SIZE))
    )
    max_concurrency: int = setting(
        fields.Integer(load_default=C.MAX_CONCURRENCY, validate=formats.between(1, C.MAX_CONCURRENCY))
    )
    flush_interval: float = setting(
        fields.Float(load_default=1.0, validate=formats.between(0.05, 3600, " seconds"))
    )
    unmapped: str = setting(
        fields.String(
            load_default="pass", validate=validate.OneOf(("pass", "drop"), error="must be pass or drop")
        )
    )
    send_profiles: bool = setting(fields.Boolean(load_default=True))
    nested: str = setting(
        fields.String(
            load_default="stringify",
            validate=validate.OneOf(("stringify", "reject"), error="must be stringify or reject"),
        )
    )
    invalid_fields: str = setting(
        fields.String(
            load_default="drop",
            validate=validate.OneOf(("drop", "reject"), error="must be drop or reject"),
        )
    )
    default_country_code: str | None = setting(
        fields.String(
            load_default=None,
            allow_none=True,
            validate=validate.Regexp(r"^\+[1-9]\d{0,3}$", error="must be + and 1-4 digits, e.g. +1 or +44"),
        )
    )
    anonymous: str = setting(
        fields.String(
            load_default="filter",
            validate=validate.OneOf(
                ("filter", "object_id", "reject", "hold"), error="must be filter, object_id, reject or hold"
            ),
        )
    )
    # With anonymous = "hold": how long a visitor's anonymous events wait for an identify (or any event)
    # that says who they are, and how many the integration holds at most (past it they are filtered).
    anonymous_hold: float = setting(
        fields.Float(load_default=C.DEFAULT_ANONYMOUS_HOLD_S, validate=formats.between(1, 7 * 86400, " s"))
    )
    anonymous_hold_max: int = setting(
        fields.Integer(load_default=C.DEFAULT_ANONYMOUS_HOLD_MAX, validate=formats.between(1, 10**8))
    )
    # The page origins a browser may post from with this integration's write key (the collector's CORS).
    allowed_origins: tuple[str, ...] = setting(
        fields.List(fields.String(validate=formats.origin), load_default=()),
        from_env=_comma_list,
        convert=tuple,
    )
    # Requests a second (and a burst) one client address may make from a browser (an Origin header): a
    # browser key is public, so it is rate-limited where a server's is not.
    browser_rate_limit: float = setting(
        fields.Float(
            load_default=C.DEFAULT_BROWSER_RATE_LIMIT, validate=formats.between(0.1, 10_000, " requests/s")
        )
    )
    browser_rate_burst: int = setting(
        fields.Integer(load_default=C.DEFAULT_BROWSER_RATE_BURST, validate=formats.between(1, 100_000))
    )
    # Which events are sent, by the name they arrive with (before renaming: a track's event, "page" or
    # "screen"): at most one of the two lists; an event outside it is filtered, with the reason. Identifies
    # are never filtered by them.
    events_allow: tuple[str, ...] = setting(
        fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=()),
        from_env=_comma_list,
        convert=tuple,
    )
    events_deny: tuple[str, ...] = setting(
        fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=()),
        from_env=_comma_list,
        convert=tuple,
    )
    # Push tokens (context.device.token): the type when a call does not say it (None: from the device's
    # type or OS, android -> fcm, ios -> apns), and where a token record's objectId comes from.
    device_token_type: str | None = setting(
        fields.String(
            load_default=None,
            allow_none=True,
            validate=validate.OneOf(C.TOKEN_TYPES, error="must be one of " + ", ".join(C.TOKEN_TYPES)),
        )
    )
    token_object_id: str = setting(
        fields.String(
            load_default="anonymousId",
            validate=validate.OneOf(
                C.TOKEN_OBJECT_ID_SOURCES, error="must be one of " + ", ".join(C.TOKEN_OBJECT_ID_SOURCES)
            ),
        )
    )
    max_event_properties: int = setting(
        fields.Integer(load_default=C.DEFAULT_MAX_EVENT_PROPERTIES, validate=formats.between(1, 1024))
    )
    dedup_window: float = setting(
        fields.Float(load_default=C.DEFAULT_DEDUP_WINDOW_S, validate=formats.between(0, 30 * 86400, " s"))
    )
    give_up_age: float = setting(
        fields.Float(load_default=C.DEFAULT_GIVE_UP_AGE_S, validate=formats.between(1, 30 * 86400, " s"))
    )
    identity_retention: float = setting(
        fields.Float(
            load_default=C.DEFAULT_IDENTITY_RETENTION_S, validate=formats.between(0, 3650 * 86400, " s")
        )
    )
    max_pending: int = setting(
        fields.Integer(load_default=C.DEFAULT_MAX_PENDING, validate=formats.between(0, 10**10))
    )
    dead_letter_max_age: float = setting(
        fields.Float(
            load_default=C.DEFAULT_DEAD_LETTER_MAX_AGE_S, validate=formats.between(0, 3650 * 86400, " s")
        )
    )
    debugger_size: int = setting(
        fields.Integer(load_default=C.DEFAULT_DEBUGGER_SIZE, validate=formats.between(0, C.MAX_DEBUGGER_SIZE))
    )
    dead_letter_max_count: int = setting(
        fields.Integer(load_default=C.DEFAULT_DEAD_LETTER_MAX_COUNT, validate=formats.between(0, 10**9))
    )
    event_renames: Mapping[str, str] = setting(
        fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict, data_key="events"),
        env=None,
        convert=dict,
    )
    property_renames: Mapping[str, Mapping[str, str]] = setting(
        fields.Dict(
            keys=fields.String(),
            values=fields.Dict(keys=fields.String(), values=fields.String()),
            load_default=dict,
            data_key="properties",
        ),
        env=None,
        convert=lambda renames: {event: dict(props) for event, props in renames.items()},
    )
    profile_fields: Mapping[str, tuple[str, ...]] = setting(
        fields.Dict(
            keys=fields.String(validate=validate.Length(min=1, max=C.MAX_KEY_CHARS)),
            values=fields.List(fields.String(validate=validate.Length(min=1))),
            load_default=dict,
            data_key="profile",
        ),
        env=None,
        convert=lambda fields_: {target: tuple(sources) for target, sources in fields_.items()},
    )

    #: where it was defined: "config" (the environment or the TOML file: read-only in the console) or
    #: "console" (saved in Redis by the console, editable there)
    origin: str = field(default="config", compare=False)

    @property
    def upload_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/") + "/1/upload"
        assert self.region in C.REGIONS  # validated; never interpolate anything else into a host
        return f"https://{self.region}.api.clevertap.com/1/upload"

    @property
    def delete_url(self) -> str:
        """CleverTap's Delete User Profile API for this integration's account (see pipeline.forget)."""
        return self.upload_url.removesuffix("/1/upload") + "/1/delete/profiles.json"

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration with the passcode masked, for ``check-config``."""
        return {**_public(self), "upload_url": self.upload_url}


@dataclass(frozen=True)
class Settings:
    """Process-wide settings and every integration."""

    integrations: Mapping[str, IntegrationConfig]
    redis_url: str = setting(
        fields.String(load_default=C.DEFAULT_REDIS_URL, validate=formats.redis_url), env="REDIS_URL"
    )
    # The store on Redis Cluster: redis-py's cluster client on redis_url (any node; it finds the rest).
    redis_cluster: bool = setting(fields.Boolean(load_default=False), env="CLEVERTAP_REDIS_CLUSTER")
    # Celery's broker (default: redis_url). kombu has no cluster transport: with redis_cluster it must name
    # a plain Redis, or a Sentinel-managed one (sentinel://).
    broker_url: str | None = setting(
        fields.String(load_default=None, allow_none=True, validate=formats.broker_url),
        env="CELERY_BROKER_URL",
        repr=False,
    )
    # With a sentinel:// broker: the name of the master its Sentinels watch (kombu's master_name).
    broker_master_name: str | None = setting(
        fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 200)),
        env="CLEVERTAP_BROKER_MASTER_NAME",
    )
    # Ingest and the collector's 200 wait until this many replicas have each write (WAIT).
    redis_wait_replicas: int = setting(
        fields.Integer(load_default=0, validate=validate.Range(0, 16, error="must be 0 to 16")),
        env="CLEVERTAP_REDIS_WAIT_REPLICAS",
    )
    key_prefix: str = setting(
        fields.String(
            load_default=C.DEFAULT_KEY_PREFIX,
            validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,32}$", error="must be 1-32 letters, digits, . _ -"),
        )
    )
    connect_timeout: float = setting(
        fields.Float(load_default=C.DEFAULT_CONNECT_TIMEOUT_S, validate=formats.between(0.1, 60, " s"))
    )
    read_timeout: float = setting(
        fields.Float(load_default=C.DEFAULT_READ_TIMEOUT_S, validate=formats.between(0.1, 600, " s"))
    )
    token_lease: float = setting(
        fields.Float(load_default=C.DEFAULT_TOKEN_LEASE_S, validate=formats.between(1, 3600, " s"))
    )
    auth_probe_interval: float = setting(
        fields.Float(load_default=C.DEFAULT_AUTH_PROBE_INTERVAL_S, validate=formats.between(0.1, 86400, " s"))
    )
    sweep_grace: float = setting(
        fields.Float(load_default=C.DEFAULT_SWEEP_GRACE_S, validate=formats.between(1, 3600, " s"))
    )
    # Proxies (addresses or networks) whose X-Forwarded-For the collector believes for a client's address.
    trusted_proxies: tuple[str, ...] = setting(
        fields.List(fields.String(validate=formats.network), load_default=()),
        from_env=_comma_list,
        convert=tuple,
    )
    # Forgetting a user: how long later events naming them are filtered, and how many delete requests go
    # to one CleverTap account at once (RudderStack found parallel deletes throttled).
    forget_suppress_days: float = setting(
        fields.Float(
            load_default=C.DEFAULT_FORGET_SUPPRESS_DAYS, validate=formats.between(0.001, 3650, " days")
        )
    )
    delete_concurrency: int = setting(
        fields.Integer(load_default=1, validate=formats.between(1, C.MAX_CONCURRENCY))
    )
    # Imports: at most this many records of one import are in Redis at once (queued, not yet delivered).
    import_window: int = setting(
        fields.Integer(load_default=C.DEFAULT_IMPORT_WINDOW, validate=formats.between(1000, 10_000_000))
    )
    log_format: str = setting(
        fields.String(
            load_default="text", validate=validate.OneOf(("text", "json"), error="must be text or json")
        ),
        env="CLEVERTAP_LOG_FORMAT",
    )
    source: str = "environment"
    #: whether this process has CLEVERTAP_CONSOLE_KEY, and so serves the integrations saved in the console
    console_key: bool = field(default=False, compare=False)

    def integration(self, name: str) -> IntegrationConfig:
        try:
            return self.integrations[name]
        except KeyError:
            known = ", ".join(sorted(self.integrations)) or "none"
            raise UnknownIntegration(
                f"no integration named {name!r} (configured: {known}); {self.unknown_hint()}"
            ) from None

    def unknown_hint(self) -> str:
        """What most often makes an integration unknown to a process: said with every such error."""
        if not self.console_key:
            return (
                f"one saved in the console is known only to processes with {ENV_CONSOLE_KEY} set, the same "
                "key the console has (workers, beat, the collector and the CLI alike)"
            )
        return (
            f"if it was saved in the console, it was saved with another {ENV_CONSOLE_KEY} than this "
            "process has, or no longer validates (the console lists it as not served)"
        )

    @property
    def min_flush_interval(self) -> float:
        """The shortest flush interval (1 s with no integration yet: the console may add them later)."""
        return min((i.flush_interval for i in self.integrations.values()), default=1.0)

    def public_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            **_public(self),
            "redis_url": _mask_url(self.redis_url),
            "broker_url": _mask_url(self.broker_url) if self.broker_url else None,
            "integrations": {n: i.public_dict() for n, i in sorted(self.integrations.items())},
        }


def _settings_of(cls: type) -> list[Field[Any]]:
    return [f for f in dataclass_fields(cls) if "schema" in f.metadata]


def _key(f: Field[Any]) -> str:
    """The name a setting has in the TOML file (and in error messages)."""
    return str(f.metadata["schema"].data_key or f.name)


def _env_var(f: Field[Any]) -> str | None:
    env = f.metadata["env"]
    return None if env is None else (env or ENV_PREFIX + f.name.upper())


def _public_value(value: Any) -> Any:
    if isinstance(value, Secret):
        return "********"
    if isinstance(value, Preset):
        return value.name
    if isinstance(value, Mapping):
        return {k: _public_value(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _public(obj: Any) -> dict[str, Any]:
    return {_key(f): _public_value(getattr(obj, f.name)) for f in _settings_of(type(obj))}


def _schema_from(cls: type, name: str) -> type[Schema]:
    """A marshmallow schema class with one field per declared setting of ``cls``."""
    return Schema.from_dict({f.name: f.metadata["schema"] for f in _settings_of(cls)}, name=name)


class IntegrationSchema(_schema_from(IntegrationConfig, "IntegrationFields")):  # type: ignore[misc]
    class Meta:
        unknown = RAISE

    @validates_schema
    def _one_passcode(self, data: dict[str, Any], **_: Any) -> None:
        if ("passcode" in data) == (data.get("passcode_env") is not None):
            raise ValidationError("give exactly one of passcode or passcode_env", "passcode")
        if data.get("write_key") is not None and data.get("write_key_env") is not None:
            raise ValidationError("give at most one of write_key or write_key_env", "write_key")
        if data.get("preset", "default") not in available_presets():
            raise ValidationError("must be one of " + ", ".join(available_presets()), "preset")
        if data.get("events_allow") and data.get("events_deny"):
            raise ValidationError(
                "give at most one of events_allow or events_deny (an allow list already denies the rest)",
                "events_deny",
            )


class SettingsSchema(_schema_from(Settings, "SettingsFields")):  # type: ignore[misc]
    class Meta:
        unknown = RAISE

    integrations = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,64}$")),
        values=fields.Nested(IntegrationSchema),
        load_default=dict,  # none is an error unless the console provides them (checked in load_settings)
    )

    @validates_schema
    def _sentinel_names_its_master(self, data: dict[str, Any], **_: Any) -> None:
        if str(data.get("broker_url") or "").startswith("sentinel://") and not data.get("broker_master_name"):
            raise ValidationError(
                "a sentinel:// broker needs the name of the master its Sentinels watch: set "
                "CLEVERTAP_BROKER_MASTER_NAME (broker_master_name)",
                "broker_master_name",
            )

    @validates_schema
    def _broker_apart_from_a_cluster(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("redis_cluster"):
            return
        broker = data.get("broker_url")
        if not broker or broker == data.get("redis_url", C.DEFAULT_REDIS_URL):
            raise ValidationError(
                "with redis_cluster, Celery's broker must be a plain Redis or a Sentinel-managed one "
                "(kombu has no cluster transport): set CELERY_BROKER_URL (broker_url) to it",
                "broker_url",
            )

    @validates_schema
    def _lease_outlives_request(self, data: dict[str, Any], **_: Any) -> None:
        timeouts = data.get("connect_timeout", C.DEFAULT_CONNECT_TIMEOUT_S) + data.get(
            "read_timeout", C.DEFAULT_READ_TIMEOUT_S
        )
        if data.get("token_lease", C.DEFAULT_TOKEN_LEASE_S) <= timeouts:
            raise ValidationError(
                f"must be longer than connect_timeout + read_timeout ({timeouts:g} s), so a killed worker's "
                "slot is freed only after its request could have ended",
                "token_lease",
            )


def _mask_url(url: str) -> str:
    """``url`` with every password masked (kombu's Sentinel URLs list several, separated by ``;``)."""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
        return parts._replace(netloc=netloc).geturl()
    return url


# ---------------------------------------------------------------------------------------------- loading

#: Settings-level keys and the environment variables that set them.
_GLOBAL_ENV = {f.name: var for f in _settings_of(Settings) if (var := _env_var(f))}
_GLOBAL_FROM_ENV = {f.name: f.metadata["from_env"] for f in _settings_of(Settings) if f.metadata["from_env"]}
#: Integration keys settable from the environment (the ``default`` integration), and their parsers.
_INTEGRATION_ENV = {_key(f): var for f in _settings_of(IntegrationConfig) if (var := _env_var(f))}
_FROM_ENV = {
    _key(f): f.metadata["from_env"] for f in _settings_of(IntegrationConfig) if f.metadata["from_env"]
}
_KNOWN_ENV = (
    set(_GLOBAL_ENV.values())
    | set(_INTEGRATION_ENV.values())
    | {
        ENV_CONFIG_FILE,
        ENV_CONSOLE_KEY,
        ENV_CONSOLE_PASSWORD,
    }
)


def _flatten(messages: Any, path: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(messages, dict):
        for key, sub in messages.items():
            if key == "_schema":
                out.extend(_flatten(sub, path))
            elif key == "value" and path and isinstance(sub, (dict, list)):
                out.extend(_flatten(sub, path))  # fields.Dict nests value errors under "value"
            else:
                out.extend(_flatten(sub, f"{path}.{key}" if path else str(key)))
    elif isinstance(messages, list):
        for msg in messages:
            out.extend(_flatten(msg, path))
    else:
        text = str(messages)
        if text == "Unknown field.":
            text = "unknown key"
        elif text == "Missing data for required field.":
            text = "required"
        out.append((path or "(top level)", text))
    return out


def _env_raw(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    raw: dict[str, Any] = {}
    errors = [
        (name, "unknown setting (typo?)")
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in _KNOWN_ENV
    ]
    for key, var in _GLOBAL_ENV.items():
        if environ.get(var, "") != "":
            raw[key] = _GLOBAL_FROM_ENV[key](environ[var]) if key in _GLOBAL_FROM_ENV else environ[var]
    default_integration: dict[str, Any] = {}
    for key, var in _INTEGRATION_ENV.items():
        value = environ.get(var, "")
        if value == "":
            continue
        default_integration[key] = _FROM_ENV[key](value) if key in _FROM_ENV else value
    if default_integration:
        raw["integrations"] = {"default": default_integration}
    return raw, errors


def _env_path(path: str) -> str:
    """Name the environment variable behind a key path of the environment-defined integration."""
    parts = path.split(".")
    if len(parts) >= 3 and parts[:2] == ["integrations", "default"] and parts[2] in _INTEGRATION_ENV:
        return _INTEGRATION_ENV[parts[2]]
    if parts[0] in _GLOBAL_ENV:
        return _GLOBAL_ENV[parts[0]]
    if path == "integrations":
        return "CLEVERTAP_ACCOUNT_ID, CLEVERTAP_PASSCODE, CLEVERTAP_REGION"
    return path


def build_integration(name: str, data: Mapping[str, Any], origin: str = "config") -> IntegrationConfig:
    """An integration from data IntegrationSchema validated (its passcode resolved)."""
    return IntegrationConfig(
        name=name,
        origin=origin,
        **{f.name: f.metadata["convert"](data[f.name]) for f in _settings_of(IntegrationConfig)},
    )


def rule_breaks(
    name: str,
    account_id: Any,
    max_concurrency: Any,
    write_key: str | None,
    others: Iterable[IntegrationConfig],
) -> dict[str, str]:
    """The rules across integrations that ``name`` would break next to ``others`` (the ones that stand), by
    key: a write key chooses the integration, so each has its own; one CleverTap account has one in-flight
    limit, so integrations sending as it agree on it. The configuration files, the console's form and the
    merge of the console's integrations all ask this one function."""
    broken: dict[str, str] = {}
    for other in others:
        if other.name == name:
            continue
        if write_key is not None and other.write_key is not None and other.write_key.reveal() == write_key:
            broken.setdefault("write_key", f"is integration {other.name}'s write key too: give each its own")
        if (
            other.account_id == account_id
            and max_concurrency is not None
            and other.max_concurrency != max_concurrency
        ):
            broken.setdefault(
                "max_concurrency",
                f"must equal integration {other.name}'s max_concurrency ({other.max_concurrency}): both send "
                f"as account {account_id}, which has one in-flight limit",
            )
    return broken


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the environment and, if named, the TOML file. Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    env_raw, errors = _env_raw(env)
    config_file = env.get(ENV_CONFIG_FILE, "")
    raw: dict[str, Any]
    if config_file:
        source = config_file
        try:
            raw = tomllib.loads(Path(config_file).read_text("utf-8"))
        except OSError as exc:
            raise ConfigError([(ENV_CONFIG_FILE, f"cannot read {config_file}: {exc.strerror}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([(config_file, f"not valid TOML: {exc}")]) from None
        # The environment still overrides global settings (REDIS_URL first of all) ...
        for key in _GLOBAL_ENV:
            if key in env_raw:
                raw[key] = env_raw[key]
        # ... and may add the ``default`` integration, but not redefine one the file has.
        env_integ = env_raw.get("integrations", {}).get("default")
        if env_integ:
            file_integ = raw.setdefault("integrations", {})
            if isinstance(file_integ, dict) and "default" in file_integ:
                errors.append(
                    (
                        "integrations.default",
                        "defined both in the config file and by CLEVERTAP_* environment variables; keep one",
                    )
                )
            elif isinstance(file_integ, dict):
                file_integ["default"] = env_integ
        path_of: Callable[[str], str] = str
    else:
        source = "environment"
        raw = env_raw
        path_of = _env_path
    try:
        data = SettingsSchema().load(raw)
    except ValidationError as exc:
        errors.extend((path_of(p), m) for p, m in _flatten(exc.messages))
        raise ConfigError(errors) from None
    if not data["integrations"] and not env.get(ENV_CONSOLE_KEY):
        errors.append((path_of("integrations"), "define at least one integration"))
    integrations: dict[str, IntegrationConfig] = {}
    for name, spec in data["integrations"].items():
        if spec.get("passcode_env") is not None:
            spec["passcode"] = env.get(spec["passcode_env"], "")
            if not spec["passcode"]:
                errors.append(
                    (
                        f"integrations.{name}.passcode_env",
                        f"environment variable {spec['passcode_env']} is not set",
                    )
                )
                continue
        if spec.get("write_key_env") is not None:
            spec["write_key"] = env.get(spec["write_key_env"], "") or None
            if spec["write_key"] is None:
                errors.append(
                    (
                        f"integrations.{name}.write_key_env",
                        f"environment variable {spec['write_key_env']} is not set",
                    )
                )
                continue
            try:
                formats.write_key(spec["write_key"])
            except ValidationError as exc:
                errors.append(
                    (f"integrations.{name}.write_key_env", f"{spec['write_key_env']}: {exc.messages[0]}")
                )
                continue
        integrations[name] = build_integration(name, spec)
    standing: list[IntegrationConfig] = []
    for name, config in sorted(integrations.items()):
        own_key = config.write_key.reveal() if config.write_key is not None else None
        broken = rule_breaks(name, config.account_id, config.max_concurrency, own_key, standing)
        errors.extend(
            (f"integrations.{name}.{setting_key}", message) for setting_key, message in broken.items()
        )
        if not broken:  # one that breaks a rule is not what the next one is held to
            standing.append(config)
    if errors:
        raise ConfigError(errors)
    return Settings(
        integrations=integrations,
        source=source,
        console_key=bool(env.get(ENV_CONSOLE_KEY)),
        **{f.name: data[f.name] for f in _settings_of(Settings)},
    )
