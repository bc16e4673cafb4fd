"""What ``clevertap-pipeline status`` reports, per integration, read from Redis."""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.deadletters import summarise
from pipeline.store import Store


def integration_status(settings: Settings, store: Store, name: str) -> dict[str, Any]:
    config = settings.integration(name)
    return {
        "account_id": config.account_id,
        "queues": store.depth(name),
        "counters": store.stats(name),
        "auth": store.auth_state(name) or "ok",
        "in_flight": store.tokens_in_flight(config.account_key),
        "limit": config.max_concurrency,
        "effective_limit": int(store.effective_limit(config.account_key, config.max_concurrency)),
        "peak_in_flight": store.peak_in_flight(config.account_key),
        "dead_letters": summarise(store, name),
    }
