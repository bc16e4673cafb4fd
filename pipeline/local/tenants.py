"""Many accounts at once: ``clevertap-pipeline bench-tenants`` and the e2e test that runs it small.

Ten CleverTap accounts (``T01`` .. ``T10``), two integrations each, on one worker and one beat against the
emulator, every account with its own behaviour:

* ``T01``: integration ``t01a`` has a big backlog (a million records by default), ``t01b`` a trickle;
* ``T02``: the API answers in 5 s; ``T03``: every request is answered 503; ``T04``: another client holds
  5 of the 15 slots (and ``t04a`` has a backlog, so the adaptive limit has something to adapt to);
* ``T05`` .. ``T10``: a steady trickle.

Trickle events carry the time they were sent, and the emulator's record file the time each record was
stored, so ingest-to-delivered latencies are exact. Figures are measured over one window and printed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.ingest import CHUNK, Ingestor, chunked
from pipeline.local.procs import Child
from pipeline.local.runner import Stack, start_stack
from pipeline.store import Store

ACCOUNTS = [f"T{n:02d}" for n in range(1, 11)]
SLOW, DOWN, SHARED, BIG = "T02", "T03", "T04", "T01"
SEND_QUEUE_KEY = "clevertap.send"  # kombu's Redis transport keeps a queue in a list of that name,
UNACKED_KEY = (
    "unacked"  # and the messages workers have taken but not acked (reserved, or waiting an ETA) here
)


def config_toml(latency_s: float, flush_s: float) -> str:
    lines = [f"# bench-tenants: ten accounts, two integrations each (API latency {latency_s:g} s)"]
    for account in ACCOUNTS:
        for side in "ab":
            lines += [
                f"[integrations.{account.lower()}{side}]",
                f'account_id = "{account}"',
                f'passcode = "pass-{account}"',
                'region = "eu1"',
                f"flush_interval = {flush_s:g}",
                "",
            ]
    return "\n".join(lines)


def event(integration: str, n: int, sent_ms: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "userId": f"{integration}-user-{n}",
        "messageId": f"{integration}-{n}",
        "properties": {"n": n, "sent_ms": sent_ms, "sku": f"SKU-{n % 97}"},
    }


@dataclass
class AccountFigures:
    account: str
    role: str
    delivered: int = 0
    rate: float = 0.0
    ceiling: float = 0.0
    latencies_ms: list[int] = field(default_factory=list)
    throttled: int = 0
    requests: int = 0
    peak_in_flight: int = 0
    effective_limit: int = 15

    def p(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


@dataclass
class TenantFigures:
    window_s: float
    accounts: dict[str, AccountFigures]
    peak_send_queue: int
    worker_cpu_s: float
    delivered_total: int
    redis_bytes_per_record: float
    throttled_after_warmup: dict[str, tuple[int, int]]  # account: (429s, requests) after the first 30 s

    def table(self) -> str:
        head = (
            "| account | role | delivered | records/s | of ceiling | p50 s | p99 s | 429s | requests | "
            "peak in flight | limit at the end |"
        )
        rows = [head, "|" + "---|" * 11]
        for a in self.accounts.values():
            share = f"{a.rate / a.ceiling:.0%}" if a.ceiling else "-"
            p50 = f"{a.p(0.5):.2f}" if a.latencies_ms else "-"
            p99 = f"{a.p(0.99):.2f}" if a.latencies_ms else "-"
            rows.append(
                f"| {a.account} | {a.role} | {a.delivered:,} | {a.rate:,.0f} | {share} | {p50} | {p99} | "
                f"{a.throttled} | {a.requests} | {a.peak_in_flight} | {a.effective_limit} |"
            )
        per_record = self.worker_cpu_s / max(1, self.delivered_total) * 1e6
        rows += [
            "",
            f"window {self.window_s:.0f} s; peak send messages (queued + taken by the worker) "
            f"{self.peak_send_queue}; worker CPU "
            f"{self.worker_cpu_s:.1f} s = {per_record:.2f} us per delivered record; Redis "
            f"{self.redis_bytes_per_record:,.0f} bytes per queued record",
        ]
        for account, (throttled, requests) in self.throttled_after_warmup.items():
            throttled_share = throttled / requests if requests else 0.0
            rows.append(
                f"{account} after the first 30 s: {throttled} 429s in {requests} requests "
                f"({throttled_share:.1%})"
            )
        return "\n".join(rows)


def _cpu_tree_s(pid: int) -> float:
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        for child in Path(f"/proc/{pid}/task").glob("*/children"):
            total += sum(_cpu_tree_s(int(c)) for c in child.read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def run_tenants(
    workdir: Path,
    backlog: int = 1_000_000,
    shared_backlog: int = 500_000,
    seconds: float = 60.0,
    latency_ms: int = 1000,
    trickle_per_s: float = 5.0,
    pool: str = "gevent",
    concurrency: int = 200,
    progress: Any = print,
    neighbours: bool = True,
) -> TenantFigures:
    """Run the scenario (see the module docstring); ``neighbours=False`` makes T02 and T03 healthy trickling
    accounts: the baseline that shows what a slow and a down neighbour cost the others."""
    workdir.mkdir(parents=True, exist_ok=True)
    flush_s = 1.0
    config = workdir / "tenants.toml"
    config.write_text(config_toml(latency_ms / 1000, flush_s))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"}
    env["CLEVERTAP_PIPELINE_CONFIG"] = str(config)
    flags: list[str] = ["--latency-ms", str(latency_ms), "--jitter-ms", str(latency_ms // 10)]
    for account in ACCOUNTS:
        flags += ["--account", f"{account}:pass-{account}"]
    flags += ["--account-fault", f"{SHARED}:held_slots=5"]
    if neighbours:
        flags += ["--account-fault", f"{SLOW}:latency_ms=5000", "--account-fault", f"{DOWN}:error_rate=1"]
    stack: Stack = start_stack(workdir, base_env=env, emulator_flags=tuple(flags), workers=0, beat=False)
    try:
        # start_stack pointed the integrations at its emulator only for the env-defined default one
        assert stack.emulator is not None
        text = config.read_text().replace(
            'region = "eu1"', f'region = "eu1"\napi_url = "{stack.emulator.url}"'
        )
        config.write_text(text)
        settings = stack.settings
        store = Store.from_url(stack.redis_url, settings.key_prefix)
        started = time.perf_counter()
        for name, n in (("t01a", backlog), ("t04a", shared_backlog)):
            ingestor = Ingestor(store, settings.integration(name))
            for chunk in chunked(((i, event(name, i, 0)) for i in range(n)), CHUNK):
                ingestor.ingest_chunk(chunk)
        progress(
            f"backlogs queued in {time.perf_counter() - started:.1f} s: "
            f"t01a {backlog:,}, t04a {shared_backlog:,}"
        )
        worker: Child = stack.add_worker(concurrency, pool)
        stack.start_beat()
        trickling = [
            n for n in settings.integrations if n[:3].upper() in ACCOUNTS and n not in ("t01a", "t04a")
        ]
        stop = threading.Event()

        def trickle() -> None:
            ingestors = {n: Ingestor(store, settings.integration(n)) for n in trickling}
            count = 0
            interval = 1 / trickle_per_s
            while not stop.is_set():
                now_ms = int(time.time() * 1000)
                for name, ingestor in ingestors.items():
                    ingestor.ingest([event(name, count, now_ms)])
                count += 1
                stop.wait(interval)

        time.sleep(3)  # the worker starts
        cpu0 = _cpu_tree_s(worker.pid)
        window_start = time.time()
        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        peak_queue, redis_peak, pending_at_peak = 0, 0, 1
        warm_stats: dict[str, Any] | None = None
        while time.time() - window_start < seconds:
            stack.check()
            peak_queue = max(peak_queue, int(store.r.llen(SEND_QUEUE_KEY)) + int(store.r.hlen(UNACKED_KEY)))
            used = int(store.r.info("memory")["used_memory"])
            if used > redis_peak:
                redis_peak = used
                pending_at_peak = max(1, sum(store.depth(n)["pending"] for n in ("t01a", "t04a")))
            if warm_stats is None and time.time() - window_start >= 30:
                warm_stats = stack.emulator.stats()
            time.sleep(0.5)
        window_s = time.time() - window_start
        stop.set()
        thread.join()
        cpu = _cpu_tree_s(worker.pid) - cpu0
        time.sleep(2 + 2 * latency_ms / 1000 + flush_s)  # the last trickle events arrive
        stats = stack.emulator.stats()
        figures = _figures(stack, store, settings, window_start, window_s, latency_ms, stats, warm_stats)
        if not neighbours:
            for account in (SLOW, DOWN):
                figures.accounts[account].role = "trickle (baseline: healthy)"
        figures.peak_send_queue = peak_queue
        figures.worker_cpu_s = cpu
        figures.redis_bytes_per_record = redis_peak / pending_at_peak
        return figures
    finally:
        stack.stop()


def _figures(
    stack: Stack,
    store: Store,
    settings: Any,
    window_start: float,
    window_s: float,
    latency_ms: int,
    stats: dict[str, Any],
    warm: dict[str, Any] | None,
) -> TenantFigures:
    roles = {BIG: "1M backlog + trickle", SLOW: "API answers in 5 s", DOWN: "API down (503)",
             SHARED: "another client holds 5 slots"}  # fmt: skip
    figures = {a: AccountFigures(a, roles.get(a, "trickle")) for a in ACCOUNTS}
    start_ms, end_ms = window_start * 1000, (window_start + window_s) * 1000
    in_window: Counter[str] = Counter()
    path = stack.workdir / "emulator-records.jsonl"
    with path.open("rb") as f:
        for line in f:
            row = orjson.loads(line)
            account, at, props = row["account"], row["at"], row["record"]["evtData"]
            if account not in figures:
                continue
            if start_ms <= at <= end_ms:
                in_window[account] += 1
            sent = props.get("sent_ms", 0)
            if sent and start_ms <= sent <= end_ms:
                figures[account].latencies_ms.append(at - sent)
    for account, fig in figures.items():
        fig.delivered = in_window[account]
        fig.rate = fig.delivered / window_s
        fig.throttled = int(stats["throttled_by_account"].get(account, 0))
        fig.requests = int(stats["requests_by_account"].get(account, 0))
        fig.peak_in_flight = int(stats["peak_in_flight"].get(account, 0))
        fig.effective_limit = int(store.effective_limit(account, 15))
        latency = 5.0 if account == SLOW else latency_ms / 1000
        slots = 10 if account == SHARED else 15
        if account in (BIG, SHARED):
            fig.ceiling = slots * 1000 / latency
    after: dict[str, tuple[int, int]] = {}
    if warm is not None:
        for account in (SHARED, BIG):
            throttled = int(stats["throttled_by_account"].get(account, 0)) - int(
                warm["throttled_by_account"].get(account, 0)
            )
            requests = int(stats["requests_by_account"].get(account, 0)) - int(
                warm["requests_by_account"].get(account, 0)
            )
            after[account] = (throttled, requests)
    delivered = sum(in_window.values())
    return TenantFigures(window_s, figures, 0, 0.0, delivered, 0.0, after)
