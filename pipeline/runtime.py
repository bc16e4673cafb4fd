"""Per-process runtime for the Celery shells: settings, the Redis store and the HTTP session, each made
lazily in the process that uses it (after a worker forks, never at import)."""

from __future__ import annotations

import os
from typing import Any

from pipeline.config import Settings, load_settings
from pipeline.delivery import Deliverer, Dispatch
from pipeline.forget import Forgetter
from pipeline.ingest import IngestMessage, Ingestor, IngestResult
from pipeline.saved import LiveSettings
from pipeline.store import Store

_state: dict[tuple[str, int], Any] = {}


def _per_process(name: str, make: Any) -> Any:
    key = (name, os.getpid())
    if key not in _state:
        _state[key] = make()
    return _state[key]


def _live() -> LiveSettings:
    value: LiveSettings = _per_process("live", lambda: LiveSettings(load_settings))
    return value


def settings() -> Settings:
    """This process's settings: the environment and the file, with the console's integrations (looked for
    every couple of seconds)."""
    return _live().current()


def store() -> Store:
    s = settings()
    return Store.for_settings(s)


def ingest(events: list[Any], integration: str = "default", message_id: str | None = None) -> IngestResult:
    """Ingest with this process's ingestor; with ``message_id``, as a message that may come again."""
    current = settings()
    if integration not in current.integrations:  # saved in the console a moment ago? look again now
        _live().invalidate()
        current = settings()
    ingestors: dict[str, Ingestor] = _per_process("ingestors", dict)
    ingestor = ingestors.get(integration)
    if ingestor is None or ingestor.config is not current.integrations.get(integration):
        ingestor = ingestors[integration] = Ingestor(store(), current.integration(integration))
    if message_id:
        return ingestor.ingest_message(IngestMessage(message_id, events))
    return ingestor.ingest(events)


def deliverer(dispatch: Dispatch) -> Deliverer:
    """This process's deliverer for its current settings. Settings are frozen, and so is a deliverer's:
    when the console changes them, the next call gets a new deliverer (on the same HTTP session, Redis
    pool and limiter), while a send already running finishes on the one it started with."""
    current = settings()
    held: dict[str, Deliverer] = _per_process("deliverer", dict)
    value = held.get("now")
    if value is None:
        value = held["now"] = Deliverer(current, store(), dispatch)
    elif value.settings is not current:
        value = held["now"] = value.with_settings(current)
    return value


def forgetter(dispatch: Any = None) -> Forgetter:
    """A forgetter for this process's current settings, on the deliverer's HTTP session and limiter."""
    current = settings()
    held: dict[str, Forgetter] = _per_process("forgetter", dict)
    value = held.get("now")
    if value is None or value.settings is not current:
        shared = _per_process("deliverer", dict).get("now")
        client = shared.client if shared is not None else None
        value = held["now"] = Forgetter(current, store(), client, dispatch=dispatch)
    return value


def reset() -> None:
    """Forget this process's settings, stores and ingestors (tests; a worker never needs it)."""
    Store.forget_shared()
    _state.clear()
