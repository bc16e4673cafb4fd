"""Benchmarks that print figures (medians over runs measured in one process), never timed assertions."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from pipeline.config import Settings, load_settings
from pipeline.ingest import CHUNK, Ingestor, bad_input, chunked
from pipeline.redis_server import EmbeddedRedis
from pipeline.sample import SPEC_PURCHASE, generate
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
    # A third of purchases are the spec's example verbatim (fresh messageIds), the rest vary.
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
