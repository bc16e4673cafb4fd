"""Benchmarks that print figures (medians over runs measured in one process), never timed assertions."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import orjson
import requests

from pipeline.config import Settings, load_settings
from pipeline.events import validate_event
from pipeline.ingest import CHUNK, Ingestor, bad_input, chunked
from pipeline.local.procs import EmulatorProcess, ProcessGroup, beat_command, wait_for, worker_command
from pipeline.local.redis_server import EmbeddedRedis
from pipeline.local.sample import SPEC_PURCHASE, generate
from pipeline.mapping import Mapper
from pipeline.store import Store


def bench_settings(redis_url: str, **extra: str) -> Settings:
    env = {
        "CLEVERTAP_ACCOUNT_ID": "BENCH-ACCOUNT",
        "CLEVERTAP_PASSCODE": "bench-passcode",
        "CLEVERTAP_REGION": "eu1",
        "CLEVERTAP_CONSENT_CATEGORIES": "marketing",
        "REDIS_URL": redis_url,
        **extra,
    }
    return load_settings(env)


@contextmanager
def redis_for_bench(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def _lines(n: int) -> list[bytes]:
    events = generate(n, seed=11)
    # Every 30th event is the spec's purchase example verbatim (with a fresh messageId); the rest vary.
    for i in range(0, n, 30):
        events[i] = {**SPEC_PURCHASE, "messageId": f"spec-{i}"}
    return [orjson.dumps(e) for e in events]


def bench_ingest(args: argparse.Namespace) -> int:
    lines = _lines(args.events)
    with redis_for_bench(args.redis_url) as url:
        settings = bench_settings(url)
        store = Store.from_url(url, settings.key_prefix)
        integ = settings.integration("default")
        cpu_rates, wall_rates = [], []
        accepted = records = 0
        for run in range(args.runs):
            store.r.flushdb()
            ingestor = Ingestor(store, integ)
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            accepted = records = 0
            for chunk in chunked(enumerate(lines, start=1), CHUNK):
                decoded = []
                for n, line in chunk:
                    try:
                        decoded.append((n, orjson.loads(line)))
                    except orjson.JSONDecodeError as exc:
                        decoded.append((n, bad_input(line[:80].decode(), str(exc))))
                res = ingestor.ingest_chunk(decoded)
                accepted += res.accepted
                records += res.records
            cpu = time.process_time() - t_cpu
            wall = time.perf_counter() - t_wall
            cpu_rates.append(len(lines) / cpu)
            wall_rates.append(len(lines) / wall)
            print(
                f"run {run + 1}: {len(lines) / cpu:,.0f} events/s per core (CPU), {len(lines) / wall:,.0f} "
                f"events/s wall",
                flush=True,
            )
        queued = store.r.llen(store.key("default", "pending"))
    print(
        f"events per run: {len(lines):,} (JSON lines: purchases, page views, product events, identifies; "
        f"~5% without consent)"
    )
    print(f"accepted {accepted:,}, records queued {records:,} (Redis list length {queued:,})")
    print(
        f"median ingest rate: {statistics.median(cpu_rates):,.0f} events/s per core "
        f"(process CPU time: decode + validate + map + encode + queue)"
    )
    print(f"median wall rate:   {statistics.median(wall_rates):,.0f} events/s (includes waiting on Redis)")
    return 0


def sample_body(n: int = 1000) -> bytes:
    """A realistic upload body: ``n`` records mapped by the Default preset from the sample events."""
    integ = load_settings(
        {"CLEVERTAP_ACCOUNT_ID": "B", "CLEVERTAP_PASSCODE": "p", "CLEVERTAP_REGION": "eu1"}
    ).integration("default")
    mapper = Mapper(integ)
    records: list[bytes] = []
    for raw in generate(n * 2, seed=5):
        event, _ = validate_event(raw)
        if event is not None:
            records += [orjson.dumps(r) for r in mapper.map(event, None, 1706540000).records]
    return b'{"d":[' + b",".join(records[:n]) + b"]}"


def bench_emulator(args: argparse.Namespace) -> int:
    body = sample_body(1000)
    headers = {
        "X-CleverTap-Account-Id": "BENCH-ACCOUNT",
        "X-CleverTap-Passcode": "bench-passcode",
        "Content-Type": "application/json; charset=utf-8",
    }
    emu = EmulatorProcess()
    try:
        rates = []
        for run in range(args.runs):

            def client(deadline: float) -> tuple[int, int]:
                session = requests.Session()
                ok = other = 0
                while time.perf_counter() < deadline:
                    resp = session.post(emu.url + "/1/upload", data=body, headers=headers, timeout=30)
                    if resp.status_code == 200:
                        ok += 1
                    else:
                        other += 1
                session.close()
                return ok, other

            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(client, [started + args.seconds] * args.concurrency))
            elapsed = time.perf_counter() - started
            ok = sum(r[0] for r in results)
            other = sum(r[1] for r in results)
            rates.append(ok / elapsed)
            print(
                f"run {run + 1}: {ok / elapsed:,.1f} uploads/s, {ok * 1000 / elapsed:,.0f} records/s "
                f"({other} non-200)",
                flush=True,
            )
        stats = emu.stats()
    finally:
        emu.stop()
    median = statistics.median(rates)
    print(
        f"{args.concurrency} concurrent clients, 1,000-record uploads, zero latency, "
        "emulator in its own process"
    )
    print(
        f"median: {median:,.1f} uploads/s = {median * 1000:,.0f} records/s; "
        f"peak in flight {stats['peak_in_flight']}, concurrency 429s {stats['concurrency_429']}"
    )
    return 0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """CPU of a process and its live children (a prefork pool), in seconds."""
    total = _cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in child.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += _tree_cpu(int(cpid))
    return total


def bench_deliver(args: argparse.Namespace) -> int:
    """Delivered records/s and worker CPU per record against an emulator answering in ``latency_ms``."""
    with redis_for_bench(args.redis_url) as url, tempfile.TemporaryDirectory(prefix="ctp-bench-") as tmp:
        emu = EmulatorProcess("--latency-ms", str(args.latency_ms), "--jitter-ms", str(args.jitter_ms))
        group = ProcessGroup()
        try:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_")},
                "REDIS_URL": url,
                "CLEVERTAP_ACCOUNT_ID": "BENCH-ACCOUNT",
                "CLEVERTAP_PASSCODE": "bench-passcode",
                "CLEVERTAP_REGION": "eu1",
                "CLEVERTAP_API_URL": emu.url,
            }
            settings = load_settings(env)
            store = Store.from_url(url, settings.key_prefix)
            store.r.flushdb()
            ingestor = Ingestor(store, settings.integration("default"))
            # A backlog of realistic records, queued before the worker starts: ingest CPU is not counted.
            template = [(n, e) for n, e in enumerate(generate(5000, seed=9))]
            queued = 0
            round_ = 0
            while queued < args.records:
                chunk = [(n, {**e, "messageId": f"{round_}-{n}"}) for n, e in template]
                for part in chunked(chunk, CHUNK):
                    queued += ingestor.ingest_chunk(part).records
                round_ += 1
            print(f"queued {queued:,} records; emulator latency {args.latency_ms} ms, 15 slots", flush=True)
            workers = [
                group.start(
                    f"worker{n}",
                    worker_command(
                        f"bench{n}", pool=args.pool, concurrency=args.concurrency, loglevel="WARNING"
                    ),
                    env,
                    Path(tmp) / f"worker{n}.log",
                )
                for n in range(args.workers)
            ]
            time.sleep(args.warmup)  # let the worker import and connect before the clock starts
            cpu_start = sum(_tree_cpu(w.pid) for w in workers)
            group.start(
                "beat",
                beat_command(Path(tmp) / "beat-schedule", loglevel="WARNING"),
                env,
                Path(tmp) / "beat.log",
            )
            first: list[float] = []

            def started() -> bool:
                if emu.stats()["requests"] or sum(emu.stats()["in_flight"].values()):
                    first.append(time.perf_counter())
                    return True
                return False

            if not wait_for(started, 60, 0.01, group):
                raise RuntimeError("no request reached the emulator within 60 s")
            # Done when the pipeline has recorded every answer (the emulator stores before it answers).
            done = wait_for(lambda: store.stats("default").get("delivered", 0) >= queued, 3600, 0.02, group)
            elapsed = time.perf_counter() - first[0]
            cpu = sum(_tree_cpu(w.pid) for w in workers) - cpu_start
            stats = emu.stats()
        finally:
            group.stop()
            emu.stop()
    if not done:
        print("did not drain")
        return 1
    rate = stats["records_stored"] / elapsed
    # The ceiling at the mean latency: fixed latency plus half the jitter (drawn uniformly from 0..jitter).
    mean_ms = args.latency_ms + args.jitter_ms / 2
    ceiling = 15 * 1000 / (mean_ms / 1000)
    print(
        f"delivered {stats['records_stored']:,} records in {elapsed:.2f} s: {rate:,.0f} records/s "
        f"= {rate / ceiling:.1%} of the {ceiling:,.0f}/s ceiling "
        f"(15 in flight x 1,000 records / {mean_ms:g} ms mean latency)"
    )
    print(
        f"worker CPU: {cpu:.2f} s = {cpu / stats['records_stored'] * 1e6:.2f} us per delivered record "
        f"(assemble + send, {args.workers} worker(s), --pool {args.pool} --concurrency {args.concurrency})"
    )
    print(
        f"peak in flight {stats['peak_in_flight']}, concurrency 429s {stats['concurrency_429']}, "
        f"requests {stats['requests_by_status']}"
    )
    return 0
