"""``bench-share``: an account shared with another client. The emulator keeps ``--held`` of the account's 15
slots for someone else; a real worker and beat deliver batches of ``--batch-size`` against its
``--latency-ms``. Prints the 429s over the whole run and after its first 30 s, and the throughput against
what the other client leaves (the free slots x batch size / latency)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pipeline.config import load_settings
from pipeline.ingest import CHUNK, Ingestor, chunked
from pipeline.local.bench import redis_for_bench
from pipeline.local.procs import EmulatorProcess, ProcessGroup, beat_command, wait_for, worker_command
from pipeline.local.sample import generate
from pipeline.store import Store

ACCOUNT = "BENCH-ACCOUNT"
SETTLE_S = 30.0


def bench_share(args: argparse.Namespace) -> int:
    free = 15 - args.held
    ceiling = free * args.batch_size / (args.latency_ms / 1000)  # records/s the other client leaves
    records = int(ceiling * args.seconds)
    flags = ("--latency-ms", str(args.latency_ms), "--account-fault", f"{ACCOUNT}:held_slots={args.held}")
    with redis_for_bench(args.redis_url) as url, tempfile.TemporaryDirectory(prefix="ctp-share-") as tmp:
        emu = EmulatorProcess(*flags)
        group = ProcessGroup()
        try:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_")},
                "REDIS_URL": url,
                "CLEVERTAP_ACCOUNT_ID": ACCOUNT,
                "CLEVERTAP_PASSCODE": "bench-passcode",
                "CLEVERTAP_REGION": "eu1",
                "CLEVERTAP_API_URL": emu.url,
                "CLEVERTAP_BATCH_SIZE": str(args.batch_size),
            }
            settings = load_settings(env)
            store = Store.from_url(url, settings.key_prefix)
            store.r.flushdb()
            ingestor = Ingestor(store, settings.integration("default"))
            template = list(enumerate(generate(5000, seed=11)))
            queued, round_ = 0, 0
            while queued < records:
                chunk = [(n, {**e, "messageId": f"{round_}-{n}"}) for n, e in template]
                for part in chunked(chunk, CHUNK):
                    queued += ingestor.ingest_chunk(part).records
                round_ += 1
            print(
                f"queued {queued:,} records; another client holds {args.held} of 15 slots; batches of "
                f"{args.batch_size}; {args.latency_ms} ms API",
                flush=True,
            )
            group.start(
                "worker", worker_command("share", concurrency=16, loglevel="WARNING"), env,
                Path(tmp) / "worker.log",
            )  # fmt: skip
            group.start(
                "beat", beat_command(Path(tmp) / "beat-schedule", "WARNING"), env, Path(tmp) / "beat.log"
            )
            if not wait_for(lambda: emu.stats()["requests"] > 0, 60, 0.01, group):
                raise RuntimeError("no request reached the emulator within 60 s")
            first = time.perf_counter()
            at_settle: dict[str, int] | None = None
            while store.stats("default").get("delivered", 0) < queued:
                group.check()  # a process that died says so
                if at_settle is None and time.perf_counter() - first >= SETTLE_S:
                    s = emu.stats()
                    at_settle = {"requests": s["requests"], "429": s["concurrency_429"]}
                time.sleep(0.05)
            elapsed = time.perf_counter() - first
            stats = emu.stats()
            limit = store.effective_limit(ACCOUNT, 15)
            raw: dict[bytes, bytes] = store.r.hgetall(store.account_key(ACCOUNT, "limit"))  # type: ignore[assignment]
            state = {k.decode(): v.decode() for k, v in raw.items()}
        finally:
            group.stop()
            emu.stop()
    total, refused = stats["requests"], stats["concurrency_429"]
    print(f"{total:,} requests in {elapsed:.1f} s, {refused} answered 429 ({refused / total:.1%})")
    if at_settle is not None:
        later = total - at_settle["requests"]
        late_refused = refused - at_settle["429"]
        print(
            f"after the first {SETTLE_S:g} s: {late_refused} of {later:,} requests 429 "
            f"({late_refused / max(1, later):.2%}); goal: under 3% in all, under 1% after {SETTLE_S:g} s"
        )
    rate = stats["records_stored"] / elapsed
    print(
        f"throughput {rate:,.0f} records/s = {rate / ceiling:.1%} of the {ceiling:,.0f}/s the other client "
        f"leaves ({free} slots x {args.batch_size} / {args.latency_ms} ms); goal: at least 95%"
    )
    print(f"effective limit at the end {limit:.2f}; limit state {state}")
    return 0
