"""What ``clevertap-pipeline status`` reports, per integration, read from Redis.

``status --json`` prints ``{"integrations": {"<name>": {...}}}``. The flat keys answer "am I keeping up, is
anything failing and why" at a glance; the nested ones keep the detail (see docs/status.md).
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.backfill import ACTIVE
from pipeline.config import Settings
from pipeline.deadletters import summarise
from pipeline.store import Store


def integration_status(settings: Settings, store: Store, name: str) -> dict[str, Any]:
    config = settings.integration(name)
    depth = store.depth(name)
    counters = store.stats(name)
    auth = store.auth_state(name)
    attempts = store.debug_entries(name, 200)
    failed = next((n for n, e in enumerate(attempts) if e["result"] != "delivered"), None)
    last_error = None
    if failed is not None:
        e = attempts[failed]
        last_error = {
            "time": e["time"],
            "batch": e["batch_id"],
            "reason": e.get("reason") or e["result"],
            # a newer attempt delivered every row: whatever it was, sends work again
            "resolved": any(a["result"] == "delivered" for a in attempts[:failed]),
        }
    unserved = store.unserved().get(name)
    return {
        # flat: the documented shape
        "pending": depth["pending"],
        "oldest_pending_age_s": store.oldest_pending_age_s(name),
        "open_batches": depth["open_batches"],
        "in_flight": store.tokens_in_flight(config.account_id),
        "limit": config.max_concurrency,
        "effective_limit": int(store.effective_limit(config.account_id, config.max_concurrency)),
        "held": depth["held_batches"],
        "auth_ok": not auth,
        "delivered": counters.get("delivered", 0),
        "dead_lettered": depth["dead_letters"],
        "filtered": counters.get("filtered", 0),
        "duplicates": counters.get("duplicate", 0),
        "retries": counters.get("retries_failures", 0) + counters.get("retries_throttles", 0),
        "throttled": counters.get("retries_throttles", 0),
        "fields_dropped": counters.get("fields_dropped", 0),
        "forgotten": counters.get("forgotten", 0),  # events filtered: their user asked to be forgotten
        "events_listed_out": counters.get("events_listed_out", 0),  # filtered by events_allow/events_deny
        "last_error": last_error,
        "queued_in_batches": store.queued_in_batches(name),
        # historical imports still reading or delivering (`import status` shows every one kept)
        "imports": [i.as_dict() for i in store.imports(name) if i.state in ACTIVE],
        "backfill_waiting": store.backfill_waiting(name),
        "not_served_since": None if unserved is None else round(unserved / 1000, 3),
        # nested: the detail
        "account_id": config.account_id,
        "node": store.node_of(name),  # on a cluster, the primary that holds the integration's slot
        "queues": depth,
        "fields_dropped_by_key": {
            k.partition(":")[2]: v for k, v in sorted(counters.items()) if k.startswith("fields_dropped:")
        },
        "counters": counters,
        "auth": auth or "ok",
        "peak_in_flight": store.peak_in_flight(config.account_id),
        "dead_letters": summarise(store, name),
        "as_of": round(time.time(), 3),
    }


def unserved_elsewhere(settings: Settings, store: Store) -> dict[str, dict[str, Any]]:
    """Integrations this process does not know that the workers found records queued for and do not
    serve either (a console integration, while neither has the console's key): name -> pending records
    and when an assembler last found it so (epoch seconds)."""
    return {
        name: {"pending": store.depth(name)["pending"], "last_found": round(ms / 1000, 3)}
        for name, ms in sorted(store.unserved().items())
        if name not in settings.integrations
    }


def forget_status(store: Store) -> dict[str, Any]:
    """Forget requests by state, and how many wait for work (status --json's ``forget``)."""
    return {"requests": store.request_states(), "unfinished": store.unfinished_requests()}


class DeliveryRate:
    """Delivered records/s per integration between one reading of status and the next (``status
    --watch``), from Redis's delivered counter and the time of each reading."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def update(self, found: dict[str, dict[str, Any]]) -> None:
        """Set each status's ``delivered_per_s``: None on the first reading of an integration."""
        for name, s in found.items():
            at, delivered = s["as_of"], s["delivered"]
            last = self._last.get(name)
            if last is not None and at > last[0]:
                s["delivered_per_s"] = round((delivered - last[1]) / (at - last[0]), 1)
            else:
                s["delivered_per_s"] = None
            self._last[name] = (at, delivered)
