"""``clevertap-pipeline bench-cluster``: the store on one Redis against Redis Clusters of 1 and 3 primaries.

For each layout, three integrations (three accounts, 15 in flight each) on this machine: ingest events/s
from one process, then delivered records/s by one celery worker (48 threads) and beat against the
emulator (its own process, answering at once), and the cost of ``redis_wait_replicas = 1`` in ingest
events/s (on one Redis with a replica, and on the 3-primary cluster with a replica each). Everything
shares this machine's cores: each figure says which process was busiest, the likely limit."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.config import Settings, load_settings
from pipeline.ingest import CHUNK, Ingestor, chunked
from pipeline.local.bench import _tree_cpu
from pipeline.local.procs import EmulatorProcess, ProcessGroup, beat_command, wait_for, worker_command
from pipeline.local.redis_cluster import EmbeddedCluster
from pipeline.local.redis_server import EmbeddedRedis, find_redis_server, free_port
from pipeline.local.sample import generate
from pipeline.store import Store

ACCOUNTS = [(f"BENCH-{n}", f"bench-pass-{n}") for n in range(3)]


@contextmanager
def _single(replica: bool) -> Iterator[tuple[str, bool, list[int]]]:
    with EmbeddedRedis() as primary:
        if not replica:
            yield primary.url, False, [primary.proc.pid if primary.proc else 0]
            return
        with EmbeddedRedis() as copy:
            assert copy.proc is not None and primary.proc is not None
            client = Store.from_url(copy.url).r
            client.replicaof("127.0.0.1", primary.port)
            wait_for(lambda: client.info("replication").get("master_link_status") == "up", 30, 0.1)
            client.close()
            yield primary.url, False, [primary.proc.pid, copy.proc.pid]


@contextmanager
def _cluster(primaries: int, replicas: int) -> Iterator[tuple[str, bool, list[int]]]:
    with EmbeddedCluster(primaries, replicas) as cluster:
        yield cluster.url, True, [p.pid for p in cluster.procs.values()]


def _names(url: str, cluster: bool) -> list[str]:
    """Three integration names, on three primaries when there are three."""
    if not cluster:
        return ["shop", "app", "crm"]
    client: Any = Store.from_url(url, cluster=True).r
    by_node: dict[str, str] = {}
    for candidate in (f"site{i}" for i in range(200)):
        node = client.get_node_from_key(f"P:{{{candidate}}}:pending")
        by_node.setdefault(node.name, candidate)
    client.close()
    names = list(by_node.values())[:3]
    names += [f"site{i}" for i in range(200) if f"site{i}" not in names][: 3 - len(names)]
    return names


def _settings(tmp: Path, url: str, cluster: bool, broker: str, api: str, names: list[str], wait: int) -> Path:
    lines = [
        f'redis_url = "{url}"',
        f"redis_cluster = {'true' if cluster else 'false'}",
        f'broker_url = "{broker}"',
        f"redis_wait_replicas = {wait}",
    ]
    for name, (account, passcode) in zip(names, ACCOUNTS, strict=True):
        lines += [
            f"[integrations.{name}]",
            f'account_id = "{account}"',
            f'passcode = "{passcode}"',
            'region = "eu1"',
            f'api_url = "{api}"',
            "flush_interval = 0.2",
            "batch_size = 1000",
        ]
    path = tmp / f"pipeline-{wait}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest(settings: Settings, names: list[str], per: int, round_: int) -> float:
    """Events/s of one process queueing ``per`` events into each integration, chunk by chunk in turn."""
    store = Store.from_url(
        settings.redis_url, settings.key_prefix, settings.redis_cluster, settings.redis_wait_replicas
    )
    template = generate(5000, seed=4)
    ingestors = {name: Ingestor(store, settings.integration(name)) for name in names}
    started = time.perf_counter()
    for name in names:
        events = [
            (n, {**template[n % len(template)], "messageId": f"{round_}-{name}-{n}"}) for n in range(per)
        ]
        for part in chunked(events, CHUNK):
            ingestors[name].ingest_chunk(part)
    rate = per * len(names) / (time.perf_counter() - started)
    store.r.close()
    return rate


def _deliver(env: dict[str, str], tmp: Path, emulator: EmulatorProcess, store_pids: list[int]) -> str:
    group = ProcessGroup()
    try:
        before = int(emulator.stats()["records_stored"])
        worker = group.start(
            "worker", worker_command("bench", "threads", 48, "WARNING"), env, tmp / "worker.log"
        )
        beat = group.start("beat", beat_command(tmp / "beat-schedule", "WARNING"), env, tmp / "beat.log")
        settings = load_settings(env)
        store = Store.for_settings(settings)

        def drained() -> bool:
            return all(
                store.depth(n)["pending"] == 0 and store.depth(n)["open_batches"] == 0
                for n in settings.integrations
            )

        # the clock starts at the first record stored: the worker's start-up is not delivery
        wait_for(lambda: int(emulator.stats()["records_stored"]) > before, 120, 0.05, group)
        started = time.perf_counter()
        before = int(emulator.stats()["records_stored"])
        cpu0 = {"worker": _tree_cpu(worker.pid), "redis": sum(_tree_cpu(p) for p in store_pids)}
        if not wait_for(drained, 600, 0.2, group):
            raise RuntimeError("not drained in 10 minutes:\n" + (tmp / "worker.log").read_text()[-3000:])
        wall = time.perf_counter() - started
        cpu = {
            "worker": _tree_cpu(worker.pid) - cpu0["worker"],
            "redis": sum(_tree_cpu(p) for p in store_pids) - cpu0["redis"],
        }
        _ = beat
        delivered = int(emulator.stats()["records_stored"]) - before
        store.r.close()
        busiest = max(cpu, key=lambda k: cpu[k])
        return (
            f"{delivered / wall:,.0f} records/s delivered ({delivered:,} in {wall:.1f} s from the first, "
            "one worker, 48 threads; "
            f"CPU s: worker {cpu['worker']:.1f}, Redis {cpu['redis']:.1f}: {busiest} busiest)"
        )
    finally:
        group.stop()


def bench_cluster(args: argparse.Namespace) -> int:
    print(
        f"redis-server: {find_redis_server()}; {args.events:,} events into each of 3 integrations", flush=True
    )
    layouts: list[tuple[str, Any]] = [
        ("1 Redis", lambda: _single(False)),
        ("cluster, 1 primary", lambda: _cluster(1, 0)),
        ("cluster, 3 primaries", lambda: _cluster(3, 0)),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctp-bench-cluster-") as tmpdir, EmbeddedRedis() as broker:
        tmp = Path(tmpdir)
        emulator = EmulatorProcess(accounts=tuple(f"{a}:{p}" for a, p in ACCOUNTS), port=free_port())
        try:
            for label, layout in layouts:
                with layout() as (url, cluster, pids):
                    names = _names(url, cluster)
                    path = _settings(tmp, url, cluster, broker.url, emulator.url, names, 0)
                    env = _env(path, url)
                    settings = load_settings(env)
                    rates = [_ingest(settings, names, args.events, r) for r in range(args.runs)]
                    ingest = statistics.median(rates)
                    deliver = _deliver(env, tmp, emulator, pids)
                    rows.append(f"{label:22} ingest {ingest:,.0f} events/s (one process); {deliver}")
                    print(rows[-1], flush=True)
            for label, layout in (
                ("1 Redis + replica", lambda: _single(True)),
                ("cluster 3+3", lambda: _cluster(3, 1)),
            ):
                with layout() as (url, cluster, _pids):
                    names = _names(url, cluster)
                    out = []
                    for wait in (0, 1):
                        path = _settings(tmp, url, cluster, broker.url, emulator.url, names, wait)
                        settings = load_settings(_env(path, url))
                        rates = [
                            _ingest(settings, names, args.events, 100 * wait + r) for r in range(args.runs)
                        ]
                        out.append(statistics.median(rates))
                    rows.append(
                        f"{label:22} ingest {out[0]:,.0f} events/s without WAIT, {out[1]:,.0f} with "
                        f"redis_wait_replicas = 1 ({out[1] / out[0]:.2f}x)"
                    )
                    print(rows[-1], flush=True)
        finally:
            emulator.stop()
    print("\n".join(["", f"summary (medians of {args.runs} ingest runs):", *rows]))
    return 0


def _env(path: Path, url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"},
        "CLEVERTAP_PIPELINE_CONFIG": str(path),
        "REDIS_URL": url,
    }
