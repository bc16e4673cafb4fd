"""Integrations saved in the console: kept in Redis, their passcodes encrypted, served live.

An integration added or edited in the console is one field of ``P:console:integrations`` (name -> JSON of its
settings, the passcode as a Fernet token under ``passcode_enc``), and every save bumps
``P:console:version``. Each process that serves integrations (workers, beat, the collector, the CLI) reads
them on top of its environment and TOML file when ``CLEVERTAP_CONSOLE_KEY`` (the Fernet key) is set, and
checks the version every couple of seconds (:class:`LiveSettings`), so a change reaches every process within
5 seconds without a restart. The same marshmallow schema as the file configuration validates them; an
integration from the environment or the file keeps its name: the console cannot shadow or edit it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
import redis
from cryptography.fernet import Fernet, InvalidToken
from marshmallow import ValidationError

from pipeline.config import (
    ENV_CONSOLE_KEY,
    IntegrationConfig,
    IntegrationSchema,
    Settings,
    _flatten,
    build_integration,
    load_settings,
    rule_breaks,
)
from pipeline.errors import ConfigError
from pipeline.store import Store

log = logging.getLogger("pipeline.saved")

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How often a process looks for console changes: a save reaches every process within 5 s.
CHECK_EVERY_S = 2.0


def fernet_from(environ: Mapping[str, str] | None = None) -> Fernet | None:
    """The console key's Fernet, or None when ``CLEVERTAP_CONSOLE_KEY`` is not set; ConfigError if it is
    not a Fernet key."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_CONSOLE_KEY, "")
    if not text:
        return None
    try:
        return Fernet(text.encode())
    except (ValueError, TypeError):
        raise ConfigError(
            [(ENV_CONSOLE_KEY, "must be a Fernet key: 32 url-safe base64-encoded bytes (see README)")]
        ) from None


class SavedIntegrations:
    """The console's integrations in one Redis."""

    def __init__(self, store: Store, fernet: Fernet | None) -> None:
        self.store = store
        self.fernet = fernet
        self.key = store.console_key("integrations")
        self.version_key = store.console_key("version")
        # The two keys are in different slots of a cluster, where a MULTI cannot hold both: there the
        # version is bumped right after the write (a process that crashed between the two leaves the change
        # unseen until the next save; on one Redis both go in one MULTI).
        self._atomic = not store.cluster

    def version(self) -> int:
        return int(self.store.r.get(self.version_key) or 0)

    def specs(self) -> dict[str, dict[str, Any]]:
        """Every saved integration's settings as stored (the passcode as its token)."""
        raw = cast(dict[bytes, bytes], self.store.r.hgetall(self.key))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    def spec(self, name: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, self.store.r.hget(self.key, name))
        return orjson.loads(raw) if raw else None

    def configs(self) -> dict[str, IntegrationConfig]:
        """Every saved integration that validates and decrypts; the others are logged and left out (a
        process without the key serves none: it could not send them)."""
        return self.built()[0]

    def built(self) -> tuple[dict[str, IntegrationConfig], dict[str, str]]:
        """(the integrations that validate and decrypt, {name: why not} for the rest)."""
        if self.fernet is None:
            return {}, {}
        out: dict[str, IntegrationConfig] = {}
        broken: dict[str, str] = {}
        for name, spec in self.specs().items():
            try:
                out[name] = self._build(name, spec)
            except InvalidToken:
                broken[name] = "cannot be decrypted with this CLEVERTAP_CONSOLE_KEY (saved with another key?)"
            except (ValidationError, KeyError, TypeError) as exc:
                broken[name] = f"not valid any more: {type(exc).__name__}"
        for name, why in broken.items():
            log.error("console integration %s is not served: %s", name, why)
        return out, broken

    def _build(self, name: str, spec: dict[str, Any]) -> IntegrationConfig:
        assert self.fernet is not None
        data = {k: v for k, v in spec.items() if k not in ("passcode_enc", "write_key_enc")}
        data["passcode"] = self.fernet.decrypt(spec["passcode_enc"].encode()).decode()
        if spec.get("write_key_enc"):
            data["write_key"] = self.fernet.decrypt(spec["write_key_enc"].encode()).decode()
        return build_integration(name, IntegrationSchema().load(data), origin="console")

    def check(
        self,
        name: str,
        spec: dict[str, Any],
        passcode: str | None,
        settings: Settings,
        new: bool,
        write_key: str | None = None,
    ) -> dict[str, str]:
        """Errors by field ({} when it would save): the file configuration's schema, the name, and the
        rules across integrations. ``passcode`` None keeps the saved one (an edit), as long as the account,
        region and API URL it is sent to stay the same; ``write_key`` None keeps the saved one."""
        errors: dict[str, str] = {}
        if not NAME.match(name):
            errors["name"] = "must be 1-64 letters, digits, '-' or '_'"
        elif name in settings.integrations and settings.integrations[name].origin != "console":
            errors["name"] = "is an integration from the environment or the config file: pick another name"
        elif new and (name in settings.integrations or self.spec(name) is not None):
            errors["name"] = "is taken"
        data = {k: v for k, v in spec.items() if k not in ("passcode_enc", "write_key_enc")}
        old = None if new else self.spec(name)
        if passcode:
            data["passcode"] = passcode
        elif old is not None:
            data["passcode"] = "unchanged-passcode"  # validated when first saved
            moved = [k for k in ("account_id", "region", "api_url") if old.get(k) != spec.get(k)]
            if moved:  # a saved passcode never goes anywhere its owner did not send it
                errors["passcode"] = (
                    f"enter the passcode again: {', '.join(moved)} changed, and the saved passcode is only "
                    "ever sent where it was entered for"
                )
        else:
            errors["passcode"] = "required"
            data["passcode"] = "placeholder"
        if write_key:
            data["write_key"] = write_key
        try:
            IntegrationSchema().load(data)
        except ValidationError as exc:
            for path, message in _flatten(exc.messages):
                errors.setdefault(path, message)
        broken = rule_breaks(
            name,
            spec.get("account_id"),
            spec.get("max_concurrency"),
            write_key,
            settings.integrations.values(),
        )
        for key, message in broken.items():
            errors.setdefault(key, message)
        return errors

    def save(
        self, name: str, spec: dict[str, Any], passcode: str | None, write_key: str | None = None
    ) -> None:
        """Store ``spec`` (checked) with the passcode and write key encrypted (None: keep the saved ones),
        and tell every process."""
        if self.fernet is None:
            raise ConfigError([(ENV_CONSOLE_KEY, "required to save integrations (it encrypts passcodes)")])
        secret_keys = (
            "passcode",
            "passcode_env",
            "write_key",
            "write_key_env",
            "passcode_enc",
            "write_key_enc",
        )
        stored = {k: v for k, v in spec.items() if k not in secret_keys}
        old = self.spec(name) or {}
        if passcode:
            stored["passcode_enc"] = self.fernet.encrypt(passcode.encode()).decode()
        elif "passcode_enc" in old:
            stored["passcode_enc"] = old["passcode_enc"]
        else:
            raise ValueError(f"no saved integration {name!r} to keep a passcode from")
        if write_key:
            stored["write_key_enc"] = self.fernet.encrypt(write_key.encode()).decode()
        elif old.get("write_key_enc"):
            stored["write_key_enc"] = old["write_key_enc"]
        pipe = self.store.r.pipeline(transaction=self._atomic)
        pipe.hset(self.key, name, orjson.dumps(stored))
        pipe.incr(self.version_key)
        pipe.execute()

    def delete(self, name: str) -> bool:
        pipe = self.store.r.pipeline(transaction=self._atomic)
        pipe.hdel(self.key, name)
        pipe.incr(self.version_key)
        return bool(pipe.execute()[0])


def merged(base: Settings, saved: SavedIntegrations) -> Settings:
    """``base`` (the environment and the file) with the console's integrations added; a console one never
    replaces one of ``base``'s."""
    extra: dict[str, IntegrationConfig] = {}
    standing = list(base.integrations.values())
    for name, config in sorted(saved.configs().items()):
        if name in base.integrations:
            continue
        key = config.write_key.reveal() if config.write_key is not None else None
        broken = rule_breaks(name, config.account_id, config.max_concurrency, key, standing)
        if broken:  # the integrations already standing keep their place: this one is left out, and logged
            log.error("console integration %s is not served: %s", name,
                      "; ".join(f"{k} {m}" for k, m in broken.items()))  # fmt: skip
            continue
        standing.append(config)
        extra[name] = config
    if not extra:
        return base
    return dataclasses.replace(base, integrations={**base.integrations, **extra})


class LiveSettings:
    """This process's settings, with the console's integrations, refreshed when the console saves (looked
    for every CHECK_EVERY_S seconds, one GET). Thread-safe."""

    def __init__(self, load: Callable[[], Settings] = load_settings, store: Store | None = None) -> None:
        self.base = load()
        self.fernet = fernet_from()
        self.store = store or Store.for_settings(self.base)
        self.saved = SavedIntegrations(self.store, self.fernet)
        self._lock = threading.Lock()
        self._settings = self.base
        self._version: int | None = None
        self._checked = 0.0

    def invalidate(self) -> None:
        """Look again on the next call (the console, right after it saved)."""
        self._checked = 0.0

    def current(self) -> Settings:
        if self.fernet is None:
            return self.base  # no key: this process serves no console integration
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return self._settings
        with self._lock:
            if now - self._checked >= CHECK_EVERY_S:
                self._checked = now
                try:
                    version = self.saved.version()
                    if version != self._version:
                        self._settings = merged(self.base, self.saved)
                        self._version = version
                except redis.RedisError as exc:  # keep what we have; the next look tries again
                    log.warning("console integrations not refreshed: %s", type(exc).__name__)
        return self._settings


def load_with_console(environ: Mapping[str, str] | None = None) -> Settings:
    """The environment's and the file's settings, with the console's integrations when
    ``CLEVERTAP_CONSOLE_KEY`` is set (for the CLI: read once). Redis unreachable: the base alone."""
    base = load_settings(environ)
    fernet = fernet_from(environ)
    if fernet is None:
        return base
    try:
        return merged(base, SavedIntegrations(Store.for_settings(base), fernet))
    except redis.RedisError:
        return base
