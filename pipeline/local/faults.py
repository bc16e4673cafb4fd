"""Faults with real processes, and exact accounting of what became of every traced event.

A :class:`FaultRun` is a whole pipeline on this machine (its own redis-server with AOF, the emulator, celery
workers and beat as real processes) fed with *traced* events: each carries its number in
``properties.trace`` (and its messageId), so at the end every event is found again in exactly one place:
stored by CleverTap (the emulator's record file), a dead letter with its reason, or filtered / rejected at
mapping with a reason. Nothing may be missing; records stored more than once are counted and reported
(CleverTap has no idempotency key, so a send cut short after the server stored it repeats).

Used by the fault suite (``tests/test_faults.py``) and by ``clevertap-pipeline soak``.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from pipeline.deadletters import Filter, iter_dead_letters
from pipeline.ingest import CHUNK, Ingestor, IngestResult, chunked
from pipeline.local.procs import Child, wait_for
from pipeline.local.runner import Stack, start_stack
from pipeline.store import Store

ACCOUNT, PASSCODE = "FAULT-ACCOUNT", "fault-passcode"
#: One event in FILTER_EVERY has no consent (filtered); one in REJECT_EVERY has no identity (rejected at
#: mapping, a dead letter with its reason). The rest map to one record each.
FILTER_EVERY, REJECT_EVERY = 50, 67
CONSENT = {"categoryPreferences": {"marketing": True}}


def expected(trace: int) -> str:
    """What the pipeline must make of traced event ``trace``: mapped, filtered or rejected."""
    if trace % FILTER_EVERY == 7:
        return "filtered"
    if trace % REJECT_EVERY == 13:
        return "rejected"
    return "mapped"


def traced_event(trace: int) -> dict[str, Any]:
    fate = expected(trace)
    event: dict[str, Any] = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"trace-{trace}",
        "timestamp": 1706540000 + trace % 86_400,
        "properties": {"trace": trace, "sku": f"SKU-{trace % 97}", "price": trace % 1000 / 10},
        "context": {
            "consent": {"categoryPreferences": {"marketing": False}} if fate == "filtered" else CONSENT
        },
    }
    if fate != "rejected":  # no email, userId or anonymousId: nothing CleverTap could key it on
        event["userId"] = f"user-{trace}"
    return event


def traced_events(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    return (traced_event(i) for i in range(start, start + n))


@dataclass
class Accounting:
    """Where every traced event ended up."""

    events: int = 0
    mapped: int = 0
    filtered: int = 0
    rejected: int = 0  # at mapping: mapping dead letters with their reasons
    delivered: int = 0  # distinct records the emulator stored
    stored: int = 0  # every record it stored, repeats included
    dead_lettered: int = 0  # rows dead-lettered by delivery, each with CleverTap's reason or the last error
    missing: list[int] = field(default_factory=list)  # mapped, but neither stored nor dead-lettered
    unexpected: list[int] = field(default_factory=list)  # stored or dead-lettered, but never mapped
    reasons: Counter[str] = field(default_factory=Counter)
    peak_in_flight: int = 0
    concurrency_429: int = 0
    limit: int = 15

    @property
    def duplicates(self) -> int:
        return self.stored - self.delivered

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and not self.unexpected
            and self.mapped == self.delivered + self.dead_lettered
            and self.events == self.mapped + self.filtered + self.rejected
            and self.peak_in_flight <= self.limit
        )

    def summary(self) -> str:
        lines = [
            f"{self.events:,} events = {self.mapped:,} mapped + {self.filtered:,} filtered + "
            f"{self.rejected:,} rejected at mapping (with reasons)",
            f"{self.mapped:,} mapped = {self.delivered:,} delivered + {self.dead_lettered:,} dead-lettered; "
            f"missing {len(self.missing)}{' e.g. ' + str(self.missing[:5]) if self.missing else ''}; "
            f"never mapped but stored {len(self.unexpected)}",
            f"duplicates (stored more than once) {self.duplicates:,}; peak in flight {self.peak_in_flight} "
            f"(limit {self.limit}); concurrency 429s {self.concurrency_429}",
        ]
        lines += [f"  dead letters: {n:,} x {reason}" for reason, n in self.reasons.most_common(5)]
        return "\n".join(lines)


class FaultRun:
    """A pipeline on this machine to break on purpose; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        *emulator_flags: str,
        redis_fsync: str = "always",
        loglevel: str = "INFO",
        **settings: str,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"}
        env.update(
            CLEVERTAP_ACCOUNT_ID=ACCOUNT,
            CLEVERTAP_PASSCODE=PASSCODE,
            CLEVERTAP_REGION="eu1",
            CLEVERTAP_CONSENT_CATEGORIES="marketing",
            CLEVERTAP_BATCH_SIZE="100",
            CLEVERTAP_FLUSH_INTERVAL="0.2",
            CLEVERTAP_SWEEP_GRACE="2",
            CLEVERTAP_CONNECT_TIMEOUT="1",
            CLEVERTAP_READ_TIMEOUT="4",
            CLEVERTAP_TOKEN_LEASE="6",  # noqa: S106 - a lease in seconds, not a password
            CLEVERTAP_AUTH_PROBE_INTERVAL="1",
        )
        env.update(settings)
        self.stack: Stack = start_stack(
            workdir,
            base_env=env,
            persistent_redis=True,
            emulator_flags=tuple(emulator_flags),
            workers=0,
            beat=False,
            loglevel=loglevel,
            redis_fsync=redis_fsync,
        )
        self.settings = self.stack.settings
        self.store = Store.from_url(self.stack.redis_url, self.settings.key_prefix)
        self.traced = 0
        self.ingested = IngestResult()

    # --------------------------------------------------------------------------------------- driving

    @property
    def emulator_url(self) -> str:
        assert self.stack.emulator is not None
        return self.stack.emulator.url

    def ingest(self, n: int) -> IngestResult:
        """Queue ``n`` more traced events, the way an upstream job would (the Python API)."""
        ingestor = Ingestor(self.store, self.settings.integration("default"))
        result = IngestResult()
        for chunk in chunked(enumerate(traced_events(n, self.traced)), CHUNK):
            part = ingestor.ingest_chunk(chunk)
            part.rejections.clear()  # counted; the dead letters hold the reasons
            result.add(part)
        self.traced += n
        self.ingested.add(result)
        return result

    def worker(self, concurrency: int = 8, **env: str) -> Child:
        return self.stack.add_worker(concurrency, **env)

    def beat(self) -> Child:
        return self.stack.start_beat(
            f"beat{sum(1 for c in self.stack.group.children if 'beat' in c.name) + 1}"
        )

    def emulator_stats(self) -> dict[str, Any]:
        assert self.stack.emulator is not None
        return self.stack.emulator.stats()

    def sending(self) -> bool:
        return bool(sum(self.emulator_stats()["in_flight"].values()) > 0)

    def wait_for_sends(self, timeout_s: float = 60) -> bool:
        """Until a request is in flight at the emulator: the moment to break something."""
        return wait_for(self.sending, timeout_s, 0.01, self.stack.group)

    def depth(self) -> dict[str, int]:
        try:
            return self.store.depth("default")
        except redis.ConnectionError:  # Redis is restarting: not drained yet
            return {"pending": -1, "open_batches": -1, "held_batches": -1, "dead_letters": -1}

    def drained(self) -> bool:
        d = self.depth()
        return d["pending"] == 0 and d["open_batches"] == 0 and d["held_batches"] == 0

    def wait_drained(self, timeout_s: float) -> bool:
        """Until nothing is queued, open or held. A worker (or beat) that exits on its own fails the run
        (RuntimeError, with its log): the pipeline must outlive what is done to it, not be restarted."""
        return wait_for(self.drained, timeout_s, 0.2, self.stack.group)

    def logs(self) -> str:
        return self.stack.logs()

    def close(self) -> None:
        self.store.r.close()
        self.stack.stop()

    # ------------------------------------------------------------------------------------ accounting

    def stored_traces(self) -> Iterator[int]:
        """The trace of every record the emulator stored, in arrival order, repeats included."""
        path = self.stack.workdir / "emulator-records.jsonl"
        if not path.exists():
            return
        with path.open("rb") as f:
            for line in f:
                record = orjson.loads(line)["record"]
                yield int(record["evtData"]["trace"])

    def account(self) -> Accounting:
        a = Accounting(events=self.traced, limit=self.settings.integration("default").max_concurrency)
        fates = Counter(expected(t) for t in range(self.traced))
        a.mapped, a.filtered = fates["mapped"], fates["filtered"]
        seen: set[int] = set()
        for trace in self.stored_traces():
            a.stored += 1
            seen.add(trace)
        a.delivered = len(seen)
        dead: set[int] = set()
        for entry in iter_dead_letters(self.store, Filter("default")):
            if entry["stage"] == "mapping":
                a.rejected += 1
                a.reasons[f"mapping: {entry['reasons'][0][:80]}"] += 1
                continue
            record = entry.get("record") or {}
            found = (record.get("evtData") or {}).get("trace")
            if isinstance(found, int):
                dead.add(found)
            a.dead_lettered += 1
            a.reasons[f"api {entry.get('code')}: {str(entry.get('error'))[:80]}"] += 1
        mapped = {t for t in range(self.traced) if expected(t) == "mapped"}
        a.missing = sorted(mapped - seen - dead)[:1000]
        a.unexpected = sorted((seen | dead) - mapped)[:1000]
        stats = self.emulator_stats()
        a.peak_in_flight = max(stats["peak_in_flight"].values(), default=0)
        a.concurrency_429 = int(stats["concurrency_429"])
        return a


def peak_rss_kib(pid: int) -> int:
    """The peak resident set of a process and its children (a prefork pool), from /proc, in KiB."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total = int(line.split()[1])
        for child in Path(f"/proc/{pid}/task").glob("*/children"):
            total += sum(peak_rss_kib(int(c)) for c in child.read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


# ------------------------------------------------------------------------------------------------- soak


@dataclass
class SoakFigures:
    events: int
    ingest_s: float
    deliver_s: float
    kills: int
    redis_restarts: int
    redis_peak_bytes: int
    worker_peak_rss_kib: int
    accounting: Accounting

    def report(self) -> str:
        a = self.accounting
        rate = (a.delivered + a.dead_lettered) / self.deliver_s if self.deliver_s else 0.0
        return "\n".join(
            [
                f"soak: {self.events:,} traced events, {self.kills} workers SIGKILLed, Redis SIGKILLed and "
                f"restarted {self.redis_restarts} time(s), emulator faults on throughout",
                f"ingest: {self.events / self.ingest_s:,.0f} events/s ({self.ingest_s:.1f} s)",
                f"delivery: {rate:,.0f} records/s ({a.delivered + a.dead_lettered:,} records in "
                f"{self.deliver_s:.1f} s, from the first worker start to the last record done)",
                a.summary(),
                f"Redis peak memory {self.redis_peak_bytes / 2**20:,.0f} MiB "
                f"({self.redis_peak_bytes / max(1, a.mapped):,.0f} bytes per queued record); "
                f"worker peak RSS {self.worker_peak_rss_kib / 1024:,.0f} MiB",
                "accounting: " + ("EXACT, nothing missing" if a.ok else "MISMATCH"),
            ]
        )


def soak(
    workdir: Path,
    events: int,
    workers: int = 2,
    kill_every_s: float = 15.0,
    redis_restarts: int = 1,
    seed: int = 1,
    progress: Any = print,
) -> SoakFigures:
    """A million events (or ``events``) through faults and kills: every ``kill_every_s`` a worker is
    SIGKILLed mid-send and replaced; ``redis_restarts`` times Redis is SIGKILLed and started again; the
    emulator answers slowly, with 503s, 429s and cut connections throughout."""
    rng = random.Random(seed)
    flags = (
        "--latency-ms", "150", "--jitter-ms", "150", "--error-rate", "0.02", "--throttle-rate", "0.02",
        "--retry-after", "0.5", "--cut-rate", "0.002", "--seed", str(seed),
    )  # fmt: skip
    run = FaultRun(
        workdir, *flags, loglevel="WARNING", CLEVERTAP_BATCH_SIZE="1000", CLEVERTAP_FLUSH_INTERVAL="1",
        CLEVERTAP_CONNECT_TIMEOUT="2", CLEVERTAP_READ_TIMEOUT="10", CLEVERTAP_TOKEN_LEASE="20",  # noqa: S106
    )  # fmt: skip
    try:
        started = time.perf_counter()
        for done in range(0, events, 100_000):
            run.ingest(min(100_000, events - done))
            progress(f"  ingested {run.traced:,}")
        ingest_s = time.perf_counter() - started
        redis_peak = int(run.store.r.info("memory")["used_memory_peak"])
        pool = [run.worker(concurrency=16) for _ in range(workers)]
        run.beat()
        started = time.perf_counter()
        kills = restarts = 0
        rss = 0
        next_kill = time.monotonic() + kill_every_s
        total = run.ingested.records
        while not run.drained():
            run.stack.check()
            rss = max([rss, *(peak_rss_kib(w.pid) for w in pool)])
            done = int(run.store.stats("default").get("delivered", 0)) if run.depth()["pending"] >= 0 else 0
            if restarts < redis_restarts and done >= total * (restarts + 1) / (redis_restarts + 1):
                assert run.stack.redis is not None
                redis_peak = max(redis_peak, int(run.store.r.info("memory")["used_memory_peak"]))
                run.stack.redis.kill()
                time.sleep(2)
                run.stack.redis.start()
                restarts += 1
                progress(f"  Redis SIGKILLed and restarted at {done:,} delivered")
            if time.monotonic() >= next_kill and run.sending():
                victim = pool.pop(rng.randrange(len(pool)))
                rss = max(rss, peak_rss_kib(victim.pid))
                victim.kill()
                pool.append(run.worker(concurrency=16))
                kills += 1
                next_kill = time.monotonic() + kill_every_s
                progress(f"  worker SIGKILLed mid-send ({kills}); {done:,} of {total:,} delivered")
            with contextlib.suppress(redis.ConnectionError):
                redis_peak = max(redis_peak, int(run.store.r.info("memory")["used_memory"]))
            time.sleep(0.5)
        deliver_s = time.perf_counter() - started
        redis_peak = max(redis_peak, int(run.store.r.info("memory")["used_memory_peak"]))
        rss = max([rss, *(peak_rss_kib(w.pid) for w in pool)])
        return SoakFigures(events, ingest_s, deliver_s, kills, restarts, redis_peak, rss, run.account())
    finally:
        run.close()


def store_outage(
    workdir: Path, events: int, workers: int, latency_ms: int, down_s: float, progress: Any = print
) -> Accounting:
    """Redis SIGKILLed once a third of ``events`` is delivered and started again from its AOF (fsync
    always) ``down_s`` later, with ``workers`` workers (8 threads each) sending to an emulator answering in
    ``latency_ms``; nothing else goes wrong. Every event is accounted for, duplicates counted; a worker that
    exits fails the run."""
    run = FaultRun(workdir, "--latency-ms", str(latency_ms), loglevel="WARNING")
    try:
        run.ingest(events)
        for _ in range(workers):
            run.worker(concurrency=8)
        run.beat()
        while int(run.store.stats("default").get("delivered", 0)) < run.ingested.records // 3:
            run.stack.check()
            time.sleep(0.1)
        assert run.stack.redis is not None
        run.stack.redis.kill()
        progress(f"  Redis SIGKILLed at a third delivered; back in {down_s:g} s")
        time.sleep(down_s)
        run.stack.redis.start()
        if not run.wait_drained(600):
            raise RuntimeError("not drained in 10 minutes")
        return run.account()
    finally:
        run.close()
