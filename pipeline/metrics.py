"""Prometheus metrics, read from Redis at each scrape: every worker on every host is counted once, with no
multiprocess directory and no push gateway. ``clevertap-pipeline metrics --port N`` serves them
(prometheus-client's exporter); the names and labels are documented in docs/metrics.md."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline import constants as C
from pipeline.backfill import ACTIVE
from pipeline.config import Settings
from pipeline.deadletters import Filter, count
from pipeline.store import Store

#: ingest's counters -> the ``outcome`` label of clevertap_events_ingested_total.
INGESTED = {
    "accepted": "accepted",
    "filtered": "filtered",
    "duplicate": "duplicate",
    "rejected_mapping": "rejected",
}


#: forget's counters -> the ``what`` label of clevertap_forgotten_total.
FORGOTTEN = {
    "events_filtered": "forgotten",
    "records": "forgotten_records",
    "dead_letters": "forgotten_dead_letters",
    "identities": "forgotten_identities",
    "held": "forgotten_held",
    "debugger": "forgotten_debugger",
}


class RedisCollector(Collector):
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        # One scrape reads Redis at a time: concurrent scrapes wait their turn instead of each taking a
        # connection of their own (and answering 500 once the pool is spent).
        self._one_at_a_time = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._one_at_a_time:
            yield from list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        ingested = CounterMetricFamily(
            "clevertap_events_ingested",
            "Events ingested, by what became of them",
            labels=["integration", "outcome"],
        )
        delivered = CounterMetricFamily(
            "clevertap_records_delivered", "Records CleverTap stored", labels=["integration"]
        )
        pending = GaugeMetricFamily(
            "clevertap_records_pending", "Records queued, not yet batched", labels=["integration"]
        )
        oldest = GaugeMetricFamily(
            "clevertap_oldest_pending_age_seconds",
            "How long the oldest queued record has waited",
            labels=["integration"],
        )
        dead_lettered = CounterMetricFamily(
            "clevertap_records_dead_lettered",
            "Records that became dead letters (api: refused by CleverTap or given up; mapping: not mappable)",
            labels=["integration", "stage"],
        )
        dead = GaugeMetricFamily(
            "clevertap_dead_letters",
            "Dead letters kept, by stage and CleverTap code",
            labels=["integration", "stage", "code"],
        )
        auth = GaugeMetricFamily(
            "clevertap_auth_ok",
            "1 while CleverTap accepts the integration's credentials and configuration",
            labels=["integration"],
        )
        limited = CounterMetricFamily(
            "clevertap_collector_rate_limited",
            "Browser requests the collector refused past browser_rate_limit (429), per client address limit",
            labels=["integration"],
        )
        anonymous = CounterMetricFamily(
            "clevertap_anonymous_events",
            "anonymous = hold: events held, released under a known identity, expired unclaimed, or not held "
            "(the hold full)",
            labels=["integration", "what"],
        )
        forgotten = CounterMetricFamily(
            "clevertap_forgotten",
            "Forgetting users: later events filtered, and copies removed from each place",
            labels=["integration", "what"],
        )
        imported = GaugeMetricFamily(  # a gauge: an import leaves the last 100 kept, and its counts with it
            "clevertap_import_records",
            "Imports kept (the last 100): records queued in the backfill lane, and what became of them",
            labels=["integration", "what"],
        )
        backfill = GaugeMetricFamily(
            "clevertap_backfill_records",
            "Records of running imports in Redis now (lanes and their batches; at most import_window each)",
            labels=["integration"],
        )
        running = GaugeMetricFamily(
            "clevertap_imports_running", "Imports reading their file or delivering", labels=["integration"]
        )
        listed = CounterMetricFamily(
            "clevertap_events_listed_out",
            "Events filtered because events_allow or events_deny leaves them out (counted in filtered too)",
            labels=["integration"],
        )
        tokens = CounterMetricFamily(
            "clevertap_push_tokens",
            "Push tokens (context.device.token): queued as token records, not sent again within the "
            "de-duplication window, or left out (no objectId, or not a token CleverTap takes)",
            labels=["integration", "what"],
        )
        for name in sorted(self.settings.integrations):
            stats = self.store.stats(name)
            listed.add_metric([name], stats.get("events_listed_out", 0))
            for what in ("queued", "repeated", "left_out"):
                tokens.add_metric([name, what], stats.get(f"tokens_{what}", 0))
            kept = self.store.imports(name)
            for what in ("queued", "delivered", "dead", "refused"):
                imported.add_metric([name, what], sum(i.number(what) for i in kept))
            active = [i for i in kept if i.state in ACTIVE]
            backfill.add_metric([name], sum(i.in_redis for i in active))
            running.add_metric([name], len(active))
            limited.add_metric([name], stats.get("browser_rate_limited", 0))
            for what, counter in FORGOTTEN.items():
                forgotten.add_metric([name, what], stats.get(counter, 0))
            for what in ("held", "released", "expired", "hold_full"):
                anonymous.add_metric([name, what], stats.get(f"anonymous_{what}", 0))
            for counter, outcome in INGESTED.items():
                ingested.add_metric([name, outcome], stats.get(counter, 0))
            delivered.add_metric([name], stats.get("delivered", 0))
            pending.add_metric([name], self.store.depth(name)["pending"])
            oldest.add_metric([name], self.store.oldest_pending_age_s(name) or 0.0)
            dead_lettered.add_metric([name, "api"], stats.get("rejected_api", 0))
            dead_lettered.add_metric([name, "mapping"], stats.get("rejected_mapping", 0))
            for key, n in count(
                self.store, Filter(name)
            ).items():  # from the counts kept in Redis: no letter read
                stage, _, code = key.partition(":")
                dead.add_metric([name, stage, code], n)
            auth.add_metric([name], 0 if self.store.auth_state(name) else 1)
        yield from (ingested, delivered, pending, oldest, dead_lettered, dead, auth, limited, anonymous)
        yield from (forgotten, imported, backfill, running, listed, tokens)
        yield from self._forget_requests()
        yield from self._accounts()

    def _forget_requests(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "clevertap_forget_requests", "Forget requests, by state (failed ones wait for `forget retry`)",
            labels=["state"],
        )  # fmt: skip
        states = self.store.request_states()
        for state in ("purging", "deleting", "held", "done", "failed"):
            requests.add_metric([state], states.get(state, 0))
        deletes = CounterMetricFamily(
            "clevertap_delete_requests", "Delete User Profile requests sent to CleverTap, by answer",
            labels=["status"],
        )  # fmt: skip
        for key, n in sorted(self.store.forget_stats().items()):
            if key.startswith("delete:"):
                deletes.add_metric([key.partition(":")[2]], n)
        yield from (requests, deletes)

    def _accounts(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "clevertap_requests",
            "Requests to CleverTap, by HTTP status ('error': no answer)",
            labels=["account", "status"],
        )
        in_flight = GaugeMetricFamily(
            "clevertap_requests_in_flight", "Requests in flight now", labels=["account"]
        )
        limit = GaugeMetricFamily(
            "clevertap_account_limit",
            "The account's effective in-flight limit (lowered while shared)",
            labels=["account"],
        )
        duration = HistogramMetricFamily(
            "clevertap_request_duration_seconds",
            "Time from sending a request to its answer",
            labels=["account"],
        )
        limits: dict[str, int] = {
            c.account_id: c.max_concurrency for c in self.settings.integrations.values()
        }
        for account, configured in sorted(limits.items()):
            counts, durations = self.store.request_counts(account)
            for status, n in sorted(counts.items()):
                requests.add_metric([account, status], n)
            in_flight.add_metric([account], self.store.tokens_in_flight(account))
            limit.add_metric([account], int(self.store.effective_limit(account, configured)))
            duration.add_metric([account], _buckets(durations), sum_value=durations.get("sum", 0.0))
        yield from (requests, in_flight, limit, duration)


def _buckets(durations: dict[str, float]) -> list[tuple[str, Any]]:
    """Cumulative buckets from the per-bucket counts kept in Redis."""
    out, total = [], 0.0
    for bound in C.REQUEST_DURATION_BUCKETS_S:
        total += durations.get(str(bound), 0.0)
        out.append((str(bound), total))
    out.append(("+Inf", total + durations.get("+Inf", 0.0)))
    return out
