"""``clevertap-pipeline bench-import``: what an import costs and what it leaves live traffic.

1. **Parsing.** CSV rows read, mapped and queued per second on one core (the importer into its lane, no
   delivery), beside JSON events ingested per second (``Ingestor``, as ``bench-ingest``), same sitting.
2. **Delivery beside a trickle.** One account, a 1 s API, batches of 1,000, a real gevent worker and beat:
   an import's delivered rows/s while a live trickle (10 events/s, batches of 100, a 1 s flush) shares the
   account, the trickle's p50/p99 ingest-to-stored, and a 3-in-flight uploader (CleverTap's own tools' shape:
   three requests at a time, nothing else) against the same emulator for comparison.
3. **Memory.** Redis's peak ``used_memory`` above its start during an import of ``--memory-rows`` rows
   (5,000,000 by default) to a fast emulator: the window bounds it, not the file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

from pipeline.config import load_settings
from pipeline.importer import Importer, Source, begin
from pipeline.imports import CsvSpec
from pipeline.ingest import CHUNK, Ingestor, chunked
from pipeline.local.redis_server import EmbeddedRedis
from pipeline.local.runner import start_stack
from pipeline.store import Store

ACC, PASS = "BENCH-IMP", "bench-imp-pass"
SPEC = CsvSpec("event", "Charged", {"order_id": "Charged ID", "amount": "Amount"}, {"amount": "Float"})
SHAPE = {"format": "csv", "type": "event", "event": "Charged"}


def write_csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("email,ts,order_id,amount,sku,qty\n")
        for i in range(rows):
            f.write(f"c{i}@example.com,{1_733_000_000 + i},O-{i},{i % 500}.99,SKU-{i % 97},{i % 5 + 1}\n")


def _events(rows: int) -> list[tuple[int, Any]]:
    return [(i, {"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": f"m{i}",
                 "timestamp": "2024-12-01T00:00:00Z", "context": {"traits": {"email": f"c{i}@example.com"}},
                 "properties": {"order_id": f"O-{i}", "total": i % 500 + 0.99, "sku": f"SKU-{i % 97}"}})
            for i in range(rows)]  # fmt: skip


def _env(redis_url: str, api_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    return {"CLEVERTAP_ACCOUNT_ID": ACC, "CLEVERTAP_PASSCODE": PASS, "CLEVERTAP_REGION": "eu1",
            "CLEVERTAP_API_URL": api_url, "REDIS_URL": redis_url, "CLEVERTAP_DEDUP_WINDOW": "0",
            "CLEVERTAP_IMPORT_WINDOW": "10000000"}  # fmt: skip


def parsing(rows: int, rounds: int, work: Path) -> dict[str, Any]:
    """CSV rows/s through the importer, JSON events/s through ingest: medians of ``rounds``, alternating."""
    path = work / "parse.csv"
    write_csv(path, rows)
    events = _events(rows)
    csv_rates, json_rates = [], []
    with EmbeddedRedis() as server:
        settings = load_settings(_env(server.url))
        config = settings.integration("default")
        store = Store.from_url(server.url, settings.key_prefix)
        for r in range(rounds):
            store.r.flushall()
            iid, _, start = begin(store, config, str(path), {**SHAPE, "round": r})
            t0 = time.perf_counter()
            with open(path, "rb") as stream:
                Importer(store, config, iid, settings.import_window).run(
                    Source(stream, "csv", config, store, SPEC), start
                )
            csv_rates.append(rows / (time.perf_counter() - t0))
            store.r.flushall()
            ingestor = Ingestor(store, config)
            t0 = time.perf_counter()
            for chunk in chunked(iter(events), CHUNK):
                ingestor.ingest_chunk(chunk)
            json_rates.append(rows / (time.perf_counter() - t0))
    c, j = statistics.median(csv_rates), statistics.median(json_rates)
    return {"rows": rows, "rounds": rounds, "csv_rows_per_s": round(c), "json_events_per_s": round(j),
            "ratio": round(c / j, 2)}  # fmt: skip


def _uploader(api_url: str, seconds: float, in_flight: int = 3, size: int = 1000) -> float:
    """CleverTap's own uploaders' shape: ``in_flight`` requests at a time of ``size`` records each; rows/s."""
    body = orjson.dumps({"d": [{"type": "event", "identity": f"x{i}", "ts": 1_733_000_000, "evtName": "Up",
                                "evtData": {"i": i}} for i in range(size)]})  # fmt: skip
    headers = {
        "X-CleverTap-Account-Id": ACC,
        "X-CleverTap-Passcode": PASS,
        "Content-Type": "application/json",
    }
    done = [0]
    end = time.monotonic() + seconds

    def loop() -> None:
        with requests.Session() as s:
            while time.monotonic() < end:
                if s.post(api_url + "/1/upload", data=body, headers=headers, timeout=30).status_code == 200:
                    done[0] += size

    t0 = time.monotonic()
    with ThreadPoolExecutor(in_flight) as pool:
        for f in [pool.submit(loop) for _ in range(in_flight)]:
            f.result()
    return done[0] / (time.monotonic() - t0)


def _stack(work: Path, flush_s: float, flags: tuple[str, ...]) -> tuple[Any, Any, Any, Store]:
    """The emulator (``flags``), an embedded Redis, one gevent worker and beat for ACC: (stack, settings,
    the default integration, a store)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"}
    env.update({"CLEVERTAP_ACCOUNT_ID": ACC, "CLEVERTAP_PASSCODE": PASS, "CLEVERTAP_BATCH_SIZE": "1000",
                "CLEVERTAP_FLUSH_INTERVAL": str(flush_s), "CLEVERTAP_DEDUP_WINDOW": "0"})  # fmt: skip
    stack = start_stack(work, base_env=env, emulator_flags=flags, workers=0, beat=False)
    try:
        settings = stack.settings
        store = Store.from_url(stack.redis_url, settings.key_prefix)
        stack.add_worker(200, "gevent")
        stack.start_beat()
    except BaseException:
        stack.stop()
        raise
    time.sleep(3)  # the worker starts
    return stack, settings, settings.integration("default"), store


def _import_and_wait(
    stack: Any, store: Store, config: Any, window: int, path: Path, every_s: float
) -> Iterator[Any]:
    """Import ``path``, then yield the import's state every ``every_s`` until it is done."""
    iid, _, start = begin(store, config, str(path), SHAPE)
    with open(path, "rb") as stream:
        Importer(store, config, iid, window).run(Source(stream, "csv", config, store, SPEC), start)
    while (info := store.import_info("default", iid)) is not None and info.state != "done":
        stack.check()
        yield info
        time.sleep(every_s)


def delivery(rows: int, latency_ms: int, work: Path, trickle_per_s: float = 10.0) -> dict[str, Any]:
    """An import's delivered rows/s at a ``latency_ms`` API beside a live trickle for the same account,
    the trickle's latency, and a 3-in-flight uploader in the same sitting."""
    path = work / "delivery.csv"
    write_csv(path, rows)
    flags = ("--latency-ms", str(latency_ms), "--jitter-ms", str(latency_ms // 10))
    stack, settings, config, store = _stack(work / "stack", 1.0, flags)
    try:
        assert stack.emulator is not None
        stop = threading.Event()
        ingestor = Ingestor(store, config)

        def trickle() -> None:
            n = 0
            while not stop.is_set():
                ping = {"type": "track", "event": "Live Ping", "userId": f"live{n}", "messageId": f"l{n}",
                        "context": {"traits": {"email": f"live{n}@x.com"}},
                        "properties": {"sent_ms": int(time.time() * 1000)}}  # fmt: skip
                ingestor.ingest([ping])
                n += 1
                stop.wait(1 / trickle_per_s)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(5)  # the trickle alone first: its own latency
        t0 = time.time()
        # (when, delivered so far): the steady rate, without the ramp and the tail
        marks = [
            (time.time(), info.number("delivered"))
            for info in _import_and_wait(stack, store, config, settings.import_window, path, 0.2)
        ]
        import_s = time.time() - t0
        middle = [(t, n) for t, n in marks if rows * 0.2 <= n <= rows * 0.8]
        steady = (middle[-1][1] - middle[0][1]) / (middle[-1][0] - middle[0][0]) if len(middle) > 1 else 0.0
        stop.set()
        thread.join()
        time.sleep(2 + 2 * latency_ms / 1000)
        alone: list[int] = []
        during: list[int] = []
        for line in (stack.workdir / "emulator-records.jsonl").open("rb"):
            row = orjson.loads(line)
            sent = row["record"].get("evtData", {}).get("sent_ms")
            if sent:
                (during if t0 * 1000 <= sent <= (t0 + import_s) * 1000 else alone).append(row["at"] - sent)
        uploader = _uploader(stack.emulator.url, min(30.0, max(10.0, import_s)))
    finally:
        stack.stop()

    def pct(xs: list[int], q: float) -> float:
        return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] / 1000, 2) if xs else float("nan")

    rate = steady or rows / import_s
    # the slots the trickle leaves: its batches (10 events/s, a 1 s flush) hold about one of the 15
    left = (15 - 1) * 1000 / (latency_ms / 1000)
    return {
        "rows": rows, "api_latency_s": latency_ms / 1000, "import_s": round(import_s, 1),
        "whole_import_rows_per_s": round(rows / import_s),
        "delivered_rows_per_s": round(rate), "of_slots_trickle_leaves": round(rate / left, 3),
        "uploader_3_in_flight_rows_per_s": round(uploader), "vs_uploader": round(rate / uploader, 2),
        "trickle_alone_p50_s": pct(alone, 0.5), "trickle_alone_p99_s": pct(alone, 0.99),
        "trickle_during_p50_s": pct(during, 0.5), "trickle_during_p99_s": pct(during, 0.99),
        "trickle_during_n": len(during),
    }  # fmt: skip


def memory(rows: int, work: Path) -> dict[str, Any]:
    """Redis's peak used_memory above its start while ``rows`` rows are imported to a fast emulator."""
    path = work / "memory.csv"
    write_csv(path, rows)
    stack, settings, config, store = _stack(work / "mem", 0.2, ("--latency-ms", "0"))
    peak, samples = [0], [True]
    try:
        base = int(store.r.info("memory")["used_memory"])
        store.r.config_set("maxmemory-policy", "noeviction")

        def sample() -> None:
            while samples[0]:
                peak[0] = max(peak[0], int(store.r.info("memory")["used_memory"]))
                time.sleep(0.1)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.time()
        for _ in _import_and_wait(stack, store, config, settings.import_window, path, 0.5):
            pass
        info = store.imports("default")[0]  # the one import of this run, done
        seconds = time.time() - t0
        samples[0] = False
        thread.join()
        delivered = info.number("delivered")
    finally:
        stack.stop()
    above = round((peak[0] - base) / 2**20, 1)
    return {"rows": rows, "window": settings.import_window, "seconds": round(seconds, 1),
            "delivered": delivered, "redis_peak_above_start_mb": above}  # fmt: skip


def bench_import(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        out: dict[str, Any] = {}
        if not args.skip_parse:
            out["parse"] = parsing(args.parse_rows, args.rounds, work)
            print("parse:", orjson.dumps(out["parse"]).decode(), flush=True)
        if not args.skip_delivery:
            out["delivery"] = delivery(args.rows, args.latency_ms, work)
            print("delivery:", orjson.dumps(out["delivery"]).decode(), flush=True)
        if args.memory_rows:
            out["memory"] = memory(args.memory_rows, work)
            print("memory:", orjson.dumps(out["memory"]).decode(), flush=True)
    return 0
