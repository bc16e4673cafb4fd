"""bench-collect: what one collector process accepts, and at what cost, against a real (embedded) Redis.

Three measurements per run, medians reported:
1. **Throughput**: client threads post Segment batches of 100 events (keep-alive connections) as fast as the
   collector answers, for ``--seconds``; events/s accepted, and the collector process's CPU per event
   (from /proc), hence events/s per core.
2. **Latency at half that rate**: the same batches, paced at half the measured events/s; p50 and p99 of the
   request latency.
3. **The CLI ingest path's CPU per event** on the same events (decode + validate + map + queue, in this
   process): the collector's overhead over the work any ingest does (goal: at most 2x, so that HTTP in
   front costs no more than the work behind it).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import orjson

from pipeline.ingest import CHUNK, Ingestor, chunked
from pipeline.local.bench import bench_settings, redis_for_bench
from pipeline.local.procs import ProcessGroup, answers, wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.sample import generate
from pipeline.store import Store

WRITE_KEY = "wk-bench-collect-0123456789"
BATCH = 100


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bodies(run: int, count: int) -> list[bytes]:
    """``count`` Segment batch bodies of BATCH events each, with messageIds unique to ``run``."""
    events = generate(count * BATCH, seed=run + 1)
    for n, event in enumerate(events):
        event["messageId"] = f"bench-{run}-{n}"
    return [
        orjson.dumps({"batch": events[i : i + BATCH], "sentAt": "2024-01-29T14:53:20Z"})
        for i in range(0, len(events), BATCH)
    ]


class Load:
    """Client threads posting bodies to the collector, each on its own keep-alive connection."""

    def __init__(self, port: int, bodies: list[bytes]) -> None:
        self.port = port
        self.bodies = bodies
        self.auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        self.next = 0
        self.lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.latencies: list[float] = []

    def _take(self) -> bytes | None:
        with self.lock:
            if self.next >= len(self.bodies):
                return None
            self.next += 1
            return self.bodies[self.next - 1]

    def _post(self, conn: http.client.HTTPConnection, body: bytes) -> None:
        started = time.perf_counter()
        conn.request(
            "POST", "/v1/batch", body, {"Content-Type": "application/json", "Authorization": self.auth}
        )
        answer = conn.getresponse()
        answer.read()
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latencies.append(elapsed)
            if answer.status == 200:
                self.accepted += BATCH
            else:
                self.refused += 1

    def flat_out(self, threads: int, seconds: float) -> float:
        """Post as fast as answered for ``seconds``; returns the wall time taken."""
        deadline = time.perf_counter() + seconds

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            while time.perf_counter() < deadline:
                body = self._take()
                if body is None:
                    return
                self._post(conn, body)
            conn.close()

        started = time.perf_counter()
        workers = [threading.Thread(target=client) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - started

    def paced(self, events_per_s: float, seconds: float, threads: int = 8) -> None:
        """Post one batch every BATCH / events_per_s seconds (open loop: a slow answer does not slow the
        schedule) for ``seconds``."""
        interval = BATCH / events_per_s
        start = time.perf_counter()
        slots = int(seconds / interval)
        slot = iter(range(slots))
        slot_lock = threading.Lock()

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            while True:
                with slot_lock:
                    n = next(slot, None)
                if n is None:
                    break
                wait = start + n * interval - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                body = self._take()
                if body is None:
                    break
                self._post(conn, body)
            conn.close()

        workers = [threading.Thread(target=client) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def _cli_ingest_cpu_per_event(store: Store, bodies: list[bytes], settings_env: dict[str, str]) -> float:
    """CPU seconds per event of the CLI's ingest path over the same events (one JSON line per event)."""
    settings = bench_settings(settings_env["REDIS_URL"])
    ingestor = Ingestor(store, settings.integration("default"))
    lines = [
        orjson.dumps({**e, "messageId": "cli-" + str(e["messageId"])})
        for body in bodies
        for e in orjson.loads(body)["batch"]
    ]
    started = time.process_time()
    for chunk in chunked(enumerate(lines, start=1), CHUNK):
        ingestor.ingest_chunk([(n, orjson.loads(line)) for n, line in chunk])
    return (time.process_time() - started) / len(lines)


def bench_collect(args: argparse.Namespace) -> int:
    with redis_for_bench(args.redis_url) as url:
        env = {  # this machine's environment, less any pipeline settings a developer has set
            **{k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"},
            "REDIS_URL": url,
            "CLEVERTAP_ACCOUNT_ID": "BENCH-ACCOUNT",
            "CLEVERTAP_PASSCODE": "bench-passcode",
            "CLEVERTAP_REGION": "eu1",
            "CLEVERTAP_CONSENT_CATEGORIES": "marketing",
            "CLEVERTAP_WRITE_KEY": WRITE_KEY,
            "CLEVERTAP_MAX_PENDING": "0",
        }
        store = Store.from_url(url)
        port = free_port()
        group = ProcessGroup()
        collector = group.start(
            "collector",
            [sys.executable, "-m", "pipeline", "collect", "--port", str(port), "--workers", "1"],
            env,
            None,
        )
        try:
            up = wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), 30, 0.2, group)
            if not up:
                print("the collector did not start", file=sys.stderr)
                return 1
            rates, per_core, cpu_us, p50s, p99s, ratios, refused = [], [], [], [], [], [], 0
            for run in range(args.runs):
                store.r.flushdb()
                bodies = _bodies(run, int(args.seconds * 400) + 50)  # more than one core can take
                load = Load(port, bodies)
                cpu0 = _cpu_s(collector.pid)
                wall = load.flat_out(args.threads, args.seconds)
                cpu = _cpu_s(collector.pid) - cpu0
                rate = load.accepted / wall
                refused += load.refused
                store.r.flushdb()
                paced = Load(port, _bodies(run + 1000, int(args.seconds * rate / 2 / BATCH) + 10))
                paced.paced(rate / 2, args.seconds)
                lat = sorted(paced.latencies)
                p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                refused += paced.refused
                store.r.flushdb()
                cli = _cli_ingest_cpu_per_event(store, bodies[: max(20, len(bodies) // 4)], env)
                rates.append(rate)
                per_core.append(load.accepted / cpu)
                cpu_us.append(cpu / load.accepted * 1e6)
                p50s.append(p50 * 1000)
                p99s.append(p99 * 1000)
                ratios.append(cpu / load.accepted / cli)
                print(
                    f"run {run + 1}: {rate:,.0f} events/s accepted ({load.accepted / cpu:,.0f} per core of "
                    f"collector CPU, {cpu / load.accepted * 1e6:.1f} µs/event); at {rate / 2:,.0f} events/s: "
                    f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; CLI ingest {cli * 1e6:.1f} µs/event "
                    f"(collector {cpu / load.accepted / cli:.2f}x)",
                    flush=True,
                )
        finally:
            group.stop()
    med = statistics.median
    print(
        f"batches of {BATCH} events (Segment /v1/batch, JSON, HTTP Basic write key), {args.threads} client "
        f"threads, one collector process (uvicorn, httptools, uvloop), {args.seconds:g} s per phase"
    )
    print(f"median accepted:          {med(rates):,.0f} events/s")
    print(f"median per core:          {med(per_core):,.0f} events/s of CPU ({med(cpu_us):.1f} µs/event)")
    print(f"median latency at half:   p50 {med(p50s):.1f} ms, p99 {med(p99s):.1f} ms")
    print(f"collector CPU per event:  {med(ratios):.2f}x the CLI ingest path's (goal: at most 2x)")
    if refused:
        print(f"refused requests: {refused} (should be 0)")
    return 0 if refused == 0 else 1
