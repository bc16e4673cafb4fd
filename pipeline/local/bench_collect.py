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

The browser shape (``--shape browser``) is one track call a request, as a page sends, from an asyncio client
(Load.flat_out_async) at each of ``--browser-connections``: 4 (a light load: about two requests share each
enqueue's round trip) and 64 from four addresses (enough that the collector, busy nearly a whole core, sets
the pace: its capacity). Beside it, a bare Starlette endpoint on the same uvicorn, their flat-out slices
alternating; then p50/p99 at half the collector's rate, and the anonymous hold's Redis bytes per event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from pipeline.collector.app import MAX_REQUESTS_PER_CLIENT
from pipeline.config import load_settings
from pipeline.ingest import CHUNK, Ingestor, chunked
from pipeline.local.bench import bench_settings, redis_for_bench
from pipeline.local.procs import ProcessGroup, answers, wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.sample import generate
from pipeline.store import Store

WRITE_KEY = "wk-bench-collect-0123456789"
BATCH = 100
ORIGIN = "https://shop.bench.test"


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

    def __init__(self, port: int, bodies: list[bytes], browser: bool = False) -> None:
        self.port = port
        self.bodies = bodies
        self.auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        # a page's request: one event, the key in the body, text/plain (sendBeacon), an Origin
        self.path, self.per_body = ("/v1/t", 1) if browser else ("/v1/batch", BATCH)
        self.headers = (
            {"Content-Type": "text/plain", "Origin": ORIGIN}
            if browser
            else {"Content-Type": "application/json", "Authorization": self.auth}
        )
        self.requests = 0
        self.next = 0
        self.lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.latencies: list[float] = []
        self.ran_dry = False  # flat_out_async ran out of bodies before its time

    def _take(self) -> bytes | None:
        with self.lock:
            if self.next >= len(self.bodies):
                return None
            self.next += 1
            return self.bodies[self.next - 1]

    def _post(self, conn: http.client.HTTPConnection, body: bytes) -> None:
        started = time.perf_counter()
        conn.request("POST", self.path, body, self.headers)
        answer = conn.getresponse()
        answer.read()
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latencies.append(elapsed)
            if answer.status == 200:
                self.accepted += self.per_body
                self.requests += 1
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

    def flat_out_async(self, connections: int, seconds: float) -> float:
        """:meth:`flat_out` with a client that costs little: ``connections`` keep-alive connections on one
        asyncio loop (uvloop), the requests written as bytes, not through http.client, so that the server
        measured sets the pace, not this process (client threads share one GIL: about two of their
        requests are out at once, and past 16 threads the client slows itself). The connections come
        from 127.0.0.2, .3, ... in turn, MAX_REQUESTS_PER_CLIENT from each (one address's most in flight).
        Returns the wall time taken."""
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        prefix = f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{head}Content-Length: "
        prefix_bytes = prefix.encode()
        taken = (prefix_bytes + b"%d\r\n\r\n" % len(body) + body for body in iter(self._take, None))
        started_at = time.perf_counter()

        async def client(n: int, deadline: float) -> None:
            source = (f"127.0.0.{2 + n // MAX_REQUESTS_PER_CLIENT}", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=source)
            try:
                while (now := time.perf_counter()) < deadline:
                    request = next(taken, None)
                    if request is None:  # the bodies ran out before the time did: the figure is short
                        self.ran_dry = self.ran_dry or now < started_at + seconds * 0.99
                        break
                    started = time.perf_counter()
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    await reader.readexactly(length)
                    self.latencies.append(time.perf_counter() - started)
                    if head[9:12] == b"200":
                        self.accepted += self.per_body
                        self.requests += 1
                    else:
                        self.refused += 1
            finally:
                writer.close()

        async def run() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(client(n, started + seconds) for n in range(connections)))
            return time.perf_counter() - started

        return uvloop.run(run())

    def paced(self, events_per_s: float, seconds: float, threads: int = 8) -> None:
        """Post one batch every BATCH / events_per_s seconds (open loop: a slow answer does not slow the
        schedule) for ``seconds``."""
        interval = self.per_body / events_per_s
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
            "CLEVERTAP_ALLOWED_ORIGINS": ORIGIN,
            # every request here comes from one address: the limit per address is set past what is measured
            "CLEVERTAP_BROWSER_RATE_LIMIT": "10000",
            "CLEVERTAP_BROWSER_RATE_BURST": "100000",
        }
        store = Store.from_url(url)
        failed = 0
        try:
            if args.shape in ("batch", "both"):
                failed += _batch_shape(args, env, store)
            if args.shape in ("browser", "both"):
                for connections in args.browser_connections:
                    failed += _browser_shape(args, env, store, connections)
                _hold_bytes(store, env)
        finally:
            store.r.close()
    return 0 if failed == 0 else 1


def _serve(group: ProcessGroup, name: str, command: list[str], env: dict[str, str], port: int) -> Any:
    child = group.start(name, command, env, None)
    if not wait_for(lambda: answers(f"http://127.0.0.1:{port}/health") or _posts(port), 30, 0.2, group):
        raise RuntimeError(f"{name} did not start")
    return child


def _posts(port: int) -> bool:
    """The bare endpoint answers a POST (it has no /health)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("POST", "/v1/t", b"{}")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _collector(group: ProcessGroup, env: dict[str, str]) -> tuple[Any, int]:
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "collect", "--port", str(port), "--workers", "1"]
    return _serve(group, "collector", command, env, port), port


def _batch_shape(args: argparse.Namespace, env: dict[str, str], store: Store) -> int:
    group = ProcessGroup()
    collector, port = _collector(group, env)
    try:
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


def _browser_bodies(run: int, count: int) -> list[bytes]:
    """``count`` single track calls as a page's SDK sends them: the write key and sentAt in the body."""
    sent = "2026-12-01T12:00:00.000Z"
    return [
        orjson.dumps({
            "type": "track", "event": "Product Viewed", "userId": f"visitor-{n % 5000}",
            "writeKey": WRITE_KEY,
            "messageId": f"br-{run}-{n}", "timestamp": sent, "sentAt": sent,
            "properties": {"product_id": f"SKU-{n % 97}", "name": "Widget", "price": 49.99},
            "context": {"traits": {"email": f"visitor-{n % 5000}@example.com"}, "page": {"path": "/p"},
                        "consent": {"categoryPreferences": {"marketing": True}}},
        })
        for n in range(count)
    ]  # fmt: skip


#: Each run's flat-out time is cut into this many slices, the collector's and the bare endpoint's in turn:
#: a shared machine's speed drifts within seconds, and both see the same drift.
SLICES = 4


def _browser_shape(args: argparse.Namespace, env: dict[str, str], store: Store, connections: int) -> int:
    """One event a request, as a page sends: requests/s and events/s per collector core, p50/p99 at half
    that rate, and a bare Starlette endpoint's requests/s on the same uvicorn (and a bare ASGI function's:
    the collector serves its calls past Starlette, and this is uvicorn alone). They are all up for
    the whole run and their flat-out slices alternate (SLICES each), so the ratio of the run compares like
    with like; an idle one costs nothing meanwhile. ``connections``: keep-alive connections of an asyncio
    client (Load.flat_out_async), MAX_REQUESTS_PER_CLIENT from each address. Also printed: how busy the
    collector was (near a whole core: the collector, not the client, set the pace, and its requests/s is
    its capacity) and how many requests shared an enqueue (a light load's few pay each round trip)."""
    bare_command = [
        sys.executable, "-c", "import sys; from pipeline.cli.serving import serve; "
        "from pipeline.local.bare_app import app; serve(app, '127.0.0.1', int(sys.argv[1]), 'text')",
    ]  # fmt: skip
    plain_command = [
        sys.executable, "-c", "import sys; from pipeline.cli.serving import serve; "
        "from pipeline.local.bare_app import plain; serve(plain, '127.0.0.1', int(sys.argv[1]), 'text')",
    ]  # fmt: skip
    plain_rates, plain_ratios = [], []
    rates, per_core, p50s, p99s, bare_rates, bare_per_core, ratios, refused = [], [], [], [], [], [], [], 0
    busy, shared = [], []
    ran_dry = 0
    for run in range(args.runs):
        group = ProcessGroup()
        try:
            collector, port = _collector(group, env)
            bare_port = free_port()
            bare_child = _serve(group, "bare", [*bare_command, str(bare_port)], env, bare_port)
            plain_port = free_port()
            _serve(group, "plain", [*plain_command, str(plain_port)], env, plain_port)
            store.r.flushdb()
            # bodies for past what either server reaches here (15,000 and 32,000 requests/s); a run that
            # still runs out says so
            mine = Load(port, _browser_bodies(run, int(args.seconds * 30000) + 100), browser=True)
            bare = Load(bare_port, _browser_bodies(run, int(args.seconds * 50000) + 100), browser=True)
            plain = Load(plain_port, _browser_bodies(run, int(args.seconds * 70000) + 100), browser=True)
            wall = cpu = bare_wall = bare_cpu = plain_wall = 0.0
            enqueues = 0
            for _ in range(SLICES):
                cpu0, calls0 = _cpu_s(collector.pid), _enqueues(store)
                wall += mine.flat_out_async(connections, args.seconds / SLICES)
                cpu += _cpu_s(collector.pid) - cpu0
                enqueues += _enqueues(store) - calls0
                cpu0 = _cpu_s(bare_child.pid)
                bare_wall += bare.flat_out_async(connections, args.seconds / SLICES)
                bare_cpu += _cpu_s(bare_child.pid) - cpu0
                plain_wall += plain.flat_out_async(connections, args.seconds / SLICES)
            rate, bare_rate = mine.requests / wall, bare.requests / bare_wall
            plain_rates.append(plain.requests / plain_wall)
            plain_ratios.append(rate / plain_rates[-1])
            store.r.flushdb()
            paced = Load(port, _browser_bodies(run + 1000, int(args.seconds * rate / 2) + 10), browser=True)
            paced.paced(rate / 2, args.seconds)
            lat = sorted(paced.latencies)
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            refused += mine.refused + paced.refused + bare.refused + plain.refused
            ran_dry += mine.ran_dry or bare.ran_dry or plain.ran_dry
        finally:
            group.stop()
        rates.append(rate)
        per_core.append(mine.requests / cpu)
        p50s.append(p50 * 1000)
        p99s.append(p99 * 1000)
        bare_rates.append(bare_rate)
        bare_per_core.append(bare.requests / bare_cpu)
        ratios.append(rate / bare_rate)
        busy.append(cpu / wall)
        shared.append(mine.requests / max(1, enqueues))
        print(
            f"browser run {run + 1}: {rate:,.0f} requests/s = events/s "
            f"({mine.requests / cpu:,.0f} per core of collector CPU); at {rate / 2:,.0f}/s: "
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; bare Starlette endpoint "
            f"{bare_rate:,.0f} requests/s, {bare.requests / bare_cpu:,.0f} per core "
            f"(collector {rate / bare_rate:.2f}x, "
            f"{mine.requests / cpu / (bare.requests / bare_cpu):.2f}x per core); collector busy "
            f"{cpu / wall:.0%}, {mine.requests / max(1, enqueues):.1f} requests an enqueue; a bare ASGI "
            f"function {plain_rates[-1]:,.0f} requests/s (collector {plain_ratios[-1]:.2f}x)",
            flush=True,
        )
    med = statistics.median
    print(
        f"browser shape: one track call a request (/v1/t, text/plain, the write key in the body, an Origin), "
        f"{connections} connections, one collector process, {args.seconds:g} s flat out per run for "
        f"each server, in {SLICES} alternating slices"
    )
    print(f"median requests/s:        {med(rates):,.0f} (= events/s), {med(per_core):,.0f} per core of CPU")
    print(f"median latency at half:   p50 {med(p50s):.1f} ms, p99 {med(p99s):.1f} ms (goal: p99 under 20 ms)")
    print(
        f"against a bare endpoint:  {med(bare_rates):,.0f} requests/s; collector {med(ratios):.2f}x "
        f"(goal: at least 0.5x; runs {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    per_core_ratio = med(c / b for c, b in zip(per_core, bare_per_core, strict=True))
    print(
        f"per core of CPU:          collector {med(per_core):,.0f} requests/s, "
        f"bare {med(bare_per_core):,.0f}; {per_core_ratio:.2f}x"
    )
    print(
        f"against bare ASGI:        {med(plain_rates):,.0f} requests/s (uvicorn alone: the collector serves "
        f"POST /v1/<call> so); collector {med(plain_ratios):.2f}x"
    )
    print(
        f"collector:                busy {med(busy):.0%} of a core, {med(shared):.1f} requests an enqueue "
        "(a round trip to Redis each)"
    )
    if ran_dry:
        print(f"{ran_dry} run(s) ran out of request bodies before their time: their figures are short")
    if refused:
        print(f"refused requests: {refused} (should be 0)")
    return 0 if refused == 0 else 1


def _enqueues(store: Store) -> int:
    """EVALSHA calls Redis has run so far (the collector's enqueues: nothing else sends one meanwhile)."""
    return int(store.r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def _hold_bytes(store: Store, env: dict[str, str], n: int = 20_000) -> None:
    """Redis bytes per held anonymous event (anonymous = "hold"), from used_memory around holding ``n``
    page views of 2,000 visitors."""
    settings = load_settings({**env, "CLEVERTAP_ANONYMOUS": "hold"})
    ingestor = Ingestor(store, settings.integration("default"))
    store.r.flushdb()
    before = int(store.r.info("memory")["used_memory"])
    events = [
        {"type": "page", "name": "Product", "anonymousId": f"anon-{n % 2000:05d}-0f3c9a1e",
         "messageId": f"h-{n}", "timestamp": "2026-12-01T12:00:00.000Z",
         "properties": {"path": "/products/widget", "title": "Widget"},
         "context": {"page": {"url": "https://shop.example.com/products/widget"},
                     "consent": {"categoryPreferences": {"marketing": True}}}}
        for n in range(n)
    ]  # fmt: skip
    for chunk in chunked(enumerate(events), CHUNK):
        ingestor.ingest_chunk(list(chunk))
    after = int(store.r.info("memory")["used_memory"])
    print(
        f"anonymous hold:           {(after - before) / n:,.0f} bytes of Redis per held event ({n:,} page "
        "views, 2,000 visitors)"
    )
