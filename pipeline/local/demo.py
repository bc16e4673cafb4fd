"""``make demo``: the whole pipeline on embedded defaults, and a summary a newcomer can read.

An embedded Redis, the emulator with a little latency and some injected 429s and 503s (and an account that
allows fewer event properties than the integration is configured for, so CleverTap itself refuses a row),
a real celery worker and beat, and a bundled sample of a few thousand events.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from pipeline.config import load_settings
from pipeline.deadletters import summarise
from pipeline.ingest import Ingestor, IngestResult
from pipeline.local.runner import Stack, interrupts_as_keyboard_interrupt, start_stack
from pipeline.local.sample import edge_cases, generate
from pipeline.store import Store

EMULATOR_FLAGS = (
    "--latency-ms", "150", "--jitter-ms", "150",
    "--throttle-rate", "0.06", "--retry-after", "0.5", "--error-rate", "0.05",
    "--max-properties", "25", "--seed", "7",
)  # fmt: skip
DEMO_SETTINGS = {
    "CLEVERTAP_REGION": "eu1",
    "CLEVERTAP_CONSENT_CATEGORIES": "marketing",
    "CLEVERTAP_BATCH_SIZE": "50",
    "CLEVERTAP_FLUSH_INTERVAL": "0.5",
}


def sample_events(count: int) -> list[dict[str, Any]]:
    events = generate(count, seed=2024) + edge_cases()
    # One event with more properties than this demo account allows (25): it passes the pipeline's
    # pre-flight (configured for 256) and CleverTap refuses it with code 522.
    events.append({
        "type": "track", "event": "Product Viewed", "userId": "user-7", "messageId": "edge-many-properties",
        "timestamp": 1706540000, "context": {"consent": {"categoryPreferences": {"marketing": True}}},
        "properties": {f"attribute_{i}": i for i in range(30)},
    })  # fmt: skip
    return events


class Printer:
    """Lines on ``out``; tqdm's bar for the delivery (on a terminal only), written around by ``line``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.bar: tqdm[Any] | None = None

    def line(self, text: str = "") -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def start_progress(self, total: int) -> tqdm[Any]:
        self.bar = tqdm(
            total=total, desc="  delivered", unit=" records", file=self.out, disable=None, dynamic_ncols=True
        )
        return self.bar

    def end_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_demo(events_count: int = 3000, timeout_s: float = 120, out: TextIO = sys.stdout) -> int:
    p = Printer(out)
    with tempfile.TemporaryDirectory(prefix="ctp-demo-") as tmp, interrupts_as_keyboard_interrupt():
        stack: Stack | None = None
        try:
            p.line("clevertap-pipeline demo: the whole pipeline on embedded defaults")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_")}
            env.update(DEMO_SETTINGS)
            started = time.monotonic()
            stack = start_stack(Path(tmp), base_env=env, emulator_flags=EMULATOR_FLAGS, loglevel="WARNING")
            assert stack.emulator is not None
            redis_where = "embedded redis-server" if stack.redis else "REDIS_URL"
            p.line(f"  redis      {redis_where} at {stack.redis_url}")
            p.line(
                f"  emulator   {stack.emulator.url} (150-300 ms a request, 6% 429s, 5% 5xx, "
                "an account limit of 25 properties an event)"
            )
            p.line(
                "  processes  celery worker (--pool threads --concurrency 16) and celery beat, real processes"
            )
            settings = load_settings(stack.env)
            store = Store.from_url(stack.redis_url, settings.key_prefix)
            if not stack.redis:
                # A shared Redis: start from a clean slate for this demo's key prefix only.
                for key in store.r.scan_iter(f"{settings.key_prefix}:*"):
                    store.r.delete(key)
            events = sample_events(events_count)
            t0 = time.perf_counter()
            result = Ingestor(store, settings.integration("default")).ingest(events)
            p.line()
            p.line(
                f"Ingested {len(events):,} events in {time.perf_counter() - t0:.2f} s "
                "(purchases, page views, product events, identifies, and a few bad ones):"
            )
            _print_ingest(p, result, store)
            p.line()
            p.line(
                "Delivering (the worker and beat do this; this command only watches Redis and the emulator):"
            )
            ok = _watch(p, stack, store, result, timeout_s)
            p.end_progress()
            if not ok:
                p.line(f"  did not finish within {timeout_s:.0f} s; logs are in {tmp}")
                _print_logs(p, Path(tmp))
                return 1
            return _summary(
                p,
                stack,
                store,
                settings.integration("default").account_id,
                result,
                events,
                time.monotonic() - started,
            )
        except KeyboardInterrupt:
            p.end_progress()
            p.line("interrupted: stopping every process the demo started")
            return 130
        finally:
            if stack is not None:
                stack.stop()


def _print_ingest(p: Printer, r: IngestResult, store: Store) -> None:
    p.line(f"  accepted              {r.accepted:6,}  -> {r.records:,} records queued in Redis")
    p.line(f"  filtered by consent   {r.filtered:6,}  (no 'marketing' consent)")
    p.line(f"  duplicate             {r.duplicate:6,}")
    p.line(f"  rejected at mapping   {r.rejected:6,}  kept as dead letters with every reason:")
    for rej in r.rejections:
        p.line(f"      event {rej.index + 1}: {'; '.join(rej.reasons)[:150]}")


def _watch(p: Printer, stack: Stack, store: Store, r: IngestResult, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    bar = p.start_progress(r.records)
    while time.monotonic() < deadline:
        stack.check()
        s = store.stats("default")
        depth = store.depth("default")
        in_flight = store.tokens_in_flight(stack.env["CLEVERTAP_ACCOUNT_ID"])
        done = s.get("delivered", 0) + s.get("rejected_api", 0)
        bar.update(done - bar.n)
        bar.set_postfix_str(
            f"{in_flight:2d} in flight, {depth['open_batches']:3d} batches open, retries "
            f"{s.get('retries_throttles', 0)} after 429 and {s.get('retries_failures', 0)} after 5xx"
        )
        if done >= r.records and depth["open_batches"] == 0 and depth["pending"] == 0:
            return True
        time.sleep(0.25)
    return False


def _summary(p: Printer, stack: Stack, store: Store, account: str, r: IngestResult,
             events: list[Any], elapsed: float) -> int:  # fmt: skip
    assert stack.emulator is not None
    s = store.stats("default")
    emu = stack.emulator.stats()
    letters = summarise(store, "default")
    api = {k: v for k, v in letters.items() if k.startswith("api:")}
    delivered = s.get("delivered", 0)
    refused = s.get("rejected_api", 0)
    p.line()
    p.line("Summary")
    p.line(
        f"  delivered             {delivered:6,} records in {s.get('batches_sent', 0)} batches "
        f"(emulator stored {emu['records_stored']:,}; {s.get('batches_partial', 0)} partial batch(es))"
    )
    p.line(f"  refused by CleverTap  {refused:6,}  dead letters, stage api, by code:")
    for key, d in sorted(api.items()):
        p.line(f"      {key.split(':')[1]} x{d['count']}: {d['example'][:140]}")
    p.line(
        f"  retries               {s.get('retries_throttles', 0):6,} after 429, "
        f"{s.get('retries_failures', 0)} after 5xx/network (injected: {emu['injected']['throttled']} 429s, "
        f"{emu['injected']['errors']} 5xx)"
    )
    p.line(
        f"  highest in flight     {store.peak_in_flight(account):6,}  (limit 15; emulator saw "
        f"{max(emu['peak_in_flight'].values(), default=0)}, concurrency 429s {emu['concurrency_429']})"
    )
    p.line(f"  took                  {elapsed:6.1f} s")
    events_ok = len(events) == r.accepted + r.filtered + r.duplicate + r.rejected
    records_ok = r.records == delivered + refused == emu["records_stored"] + refused
    p.line()
    if events_ok and records_ok:
        p.line(
            f"Every event is accounted for: {len(events):,} in = {r.accepted:,} accepted + {r.filtered:,} "
            f"filtered + {r.duplicate:,} duplicate + {r.rejected:,} rejected; {r.records:,} records queued = "
            f"{delivered:,} delivered + {refused:,} refused by CleverTap."
        )
        p.line(
            "This demo's Redis goes away with it. To look around: clevertap-pipeline run --emulator, and "
            "paste the export lines it prints into another shell to ingest, status and dead-letters list."
        )
        return 0
    p.line("MISMATCH: not every event is accounted for (see the counts above)")
    return 1


def _print_logs(p: Printer, workdir: Path) -> None:
    for log in sorted(workdir.glob("*.log")):
        p.line(f"--- {log.name}")
        p.line(log.read_text(errors="replace")[-2000:])
