"""The local tooling's verbs: ``demo``, ``run``, ``emulator`` and the benchmarks.

Registered with the product's CLI through the ``clevertap_pipeline.verbs`` entry point (pyproject.toml),
so ``pipeline`` never imports ``pipeline.local``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline.cli import EXIT_FAILED, EXIT_OK, Handler, arg, err, verb
from pipeline.config import ENV_CONSOLE_KEY, load_settings
from pipeline.errors import InputError
from pipeline.local.emulator import DEMO_ACCOUNT, Faults


@verb(
    "demo",
    "Run the whole pipeline on embedded defaults (its own Redis, the emulator, a real celery worker and "
    "beat), ingest a bundled sample and print what happened. Stops everything it started.",
    arg("--events", type=int, default=3000, help="sample events to ingest (plus a few bad ones)"),
    arg("--timeout", type=float, default=120, help="give up after this many seconds"),
)
def demo(args: argparse.Namespace) -> int:
    from pipeline.local.demo import run_demo

    return run_demo(args.events, args.timeout)


@verb(
    "run",
    "Run a worker and beat on this machine (and an embedded Redis with AOF when REDIS_URL is unset), "
    "sending to the configured CleverTap account, or to a local emulator with --emulator.",
    arg("--emulator", action="store_true", help="start a local emulator and send to it"),
    arg(
        "--emulator-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for the emulator, e.g. --emulator-flag=--latency-ms=200 (repeatable)",
    ),
    arg("--data-dir", default=".clevertap-pipeline", help="embedded Redis data, logs, beat schedule"),
    arg("--workers", type=int, default=1, help="worker processes"),
    arg("--pool", default="threads", help="celery pool of each worker"),
    arg("--concurrency", type=int, default=16, help="threads (or processes) per worker"),
    arg(
        "--collect-port",
        type=int,
        default=0,
        help="also run the collector (clevertap-pipeline collect) on this loopback port (0: not)",
    ),
    arg("--collect-workers", type=int, default=1, help="collector worker processes"),
)
def run(args: argparse.Namespace) -> int:
    from cryptography.fernet import Fernet

    from pipeline.local.datadir import ENV_FILE, DataDir, shown
    from pipeline.local.procs import answers, wait_for
    from pipeline.local.runner import interrupts_as_keyboard_interrupt, start_stack

    home = DataDir(Path(args.data_dir).resolve())
    data_dir = home.path
    env = dict(os.environ)
    own = {k: v for k, v in env.items() if k.startswith("CLEVERTAP_") or k == "REDIS_URL"}
    if args.collect_port and not env.get("CLEVERTAP_WRITE_KEY"):
        if not args.emulator and "CLEVERTAP_PIPELINE_CONFIG" not in env:
            err("error: --collect-port needs a write key: set CLEVERTAP_WRITE_KEY (SDKs send it)")
            return EXIT_FAILED
        if args.emulator:  # a made-up one for the local emulator, kept (0600) for the next start too
            env["CLEVERTAP_WRITE_KEY"] = home.secret(
                "CLEVERTAP_WRITE_KEY", lambda: "wk-" + secrets.token_urlsafe(24)
            )
    if args.emulator and not env.get(ENV_CONSOLE_KEY):
        # The console's integrations are served only where this key is: the worker, beat, the CLI and the
        # console all get the same one (kept, so integrations saved with it stay readable after a restart).
        env[ENV_CONSOLE_KEY] = home.secret(ENV_CONSOLE_KEY, lambda: Fernet.generate_key().decode())
    if not args.emulator:
        load_settings(env)  # fail fast, with every error, before starting anything
    notes: list[str] = []
    redis_port = None if env.get("REDIS_URL") else home.port_for("redis", notes)
    emulator_port = (home.port_for("emulator", notes) or 0) if args.emulator else 0
    with interrupts_as_keyboard_interrupt():
        stack = None
        try:
            stack = start_stack(
                data_dir,
                base_env=env,
                persistent_redis=True,
                emulator_flags=(*RUN_EMULATOR_FLAGS, *args.emulator_flag) if args.emulator else None,
                workers=args.workers,
                pool=args.pool,
                concurrency=args.concurrency,
                redis_port=redis_port,
                emulator_port=emulator_port,
            )
            load_settings(stack.env)
            if args.collect_port:
                stack.group.start(
                    "collector",
                    [sys.executable, "-m", "pipeline", "collect", "--port", str(args.collect_port),
                     "--workers", str(args.collect_workers)],
                    stack.env,
                    data_dir / "collector.log",
                )  # fmt: skip
                health = f"http://127.0.0.1:{args.collect_port}/health"
                if not wait_for(lambda: answers(health), 30, 0.2, stack.group):
                    raise RuntimeError(
                        f"the collector did not answer {health} (see {data_dir / 'collector.log'})"
                    )
                print(f"collector: http://127.0.0.1:{args.collect_port}/v1/batch", flush=True)
            ports = home.ports()
            if stack.redis is not None:
                ports["redis"] = stack.redis.port
                print(
                    f"embedded Redis (AOF in {data_dir / 'redis'}): REDIS_URL={stack.redis_url}", flush=True
                )
            if stack.emulator is not None:
                ports["emulator"] = int(stack.emulator.url.rsplit(":", 1)[1])
                records = data_dir / "emulator-records.jsonl"
                print(f"emulator: {stack.emulator.url} (records also in {records})", flush=True)
            home.keep_ports(ports)
            for child in stack.group.children:
                print(f"started {child.name} pid {child.pid} (log {child.log_path})", flush=True)
            for note in notes:
                print(note, flush=True)
            exports = home.exports(stack.env, own)
            kept = sorted(n for n in own if n in ("REDIS_URL", "CLEVERTAP_PIPELINE_CONFIG", *SECRETS_KEPT))
            print(
                f"to use it from another shell: source {shlex.quote(shown(data_dir / ENV_FILE))}\n"
                "  (it holds these lines: this installation's commands on PATH, and where this pipeline is)\n"
                + "\n".join(f"  {line}" for line in exports)
                + (f"\n  # and {', '.join(kept)} as you set them for this run" if kept else "")
                + "\nthen, for a tour (README, Quickstart): clevertap-pipeline ingest examples/tour.jsonl",
                flush=True,
            )
            print(
                "running; Ctrl-C or SIGTERM stops everything "
                "(in-flight batches are retried on the next start)",
                flush=True,
            )
            while True:
                for what in stack.supervise():  # what exited on its own starts again, and says so
                    print(f"{what}; started it again", flush=True)
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", flush=True)
            return EXIT_OK
        except RuntimeError as exc:
            err(f"error: {exc}")
            return EXIT_FAILED
        finally:
            if stack is not None:
                stack.stop()
            print("stopped", flush=True)


#: The emulator ``run --emulator`` starts plays the demo account, which allows 25 properties an event (an
#: account's own limit, below CleverTap's default: the tour shows what CleverTap refuses). --emulator-flag
#: comes after, so it can say otherwise.
RUN_EMULATOR_FLAGS = ("--max-properties", "25")
SECRETS_KEPT = ("CLEVERTAP_PASSCODE", "CLEVERTAP_WRITE_KEY", "CLEVERTAP_CONSOLE_KEY")


def _fault_flags() -> tuple[Any, ...]:
    """One flag per fault setting, from the settings themselves."""
    out = []
    for f in fields(Faults):
        meta = f.metadata
        options: dict[str, Any] = {"type": meta["parse"], "help": meta["help"]}
        if meta["many"]:
            options.update(action="append", default=[], metavar=meta["metavar"])
        else:
            options["default"] = f.default
        out.append(arg(Faults.flag(f), dest=f.name, **options))
    return tuple(out)


@verb(
    "emulator",
    "Run a CleverTap Upload API emulator: a real HTTP server answering POST /1/upload as CleverTap does "
    "(401, 400, per-record codes 509/512/513/522/523/524/525, 429 past the concurrency limit), with fault "
    "injection. GET /_emulator/stats and /_emulator/records show what arrived; POST /_emulator/faults "
    "changes faults while it runs; POST /_emulator/reset clears.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=int, default=8080, help="port; 0 picks a free one (printed)"),
    arg(
        "--account",
        action="append",
        default=[],
        metavar="ID:PASSCODE",
        help="an account it accepts (repeatable); none: one demo account, printed",
    ),
    *_fault_flags(),
    arg("--record-file", default=None, help="append every stored record here as JSON lines"),
    arg("--seed", type=int, default=None, help="seed for injected faults"),
)
def emulator(args: argparse.Namespace) -> int:
    from pipeline.local.emulator import Emulator, parse_account

    try:
        accounts = dict(parse_account(a) for a in args.account) if args.account else dict([DEMO_ACCOUNT])
    except ValueError as exc:
        raise InputError(str(exc)) from None
    faults = Faults(
        **{f.name: f.metadata["many"](getattr(args, f.name)) if f.metadata["many"] else getattr(args, f.name)
           for f in fields(Faults)}
    )  # fmt: skip
    record_file = open(args.record_file, "a", encoding="utf-8") if args.record_file else None  # noqa: SIM115
    emu = Emulator(accounts, faults, args.host, args.port, args.seed, record_file)
    print(f"emulator listening on {emu.url}", flush=True)
    if args.account:
        print(f"accounts: {', '.join(sorted(accounts))}", flush=True)
    else:
        print(
            f"demo account: CLEVERTAP_ACCOUNT_ID={DEMO_ACCOUNT[0]} CLEVERTAP_PASSCODE={DEMO_ACCOUNT[1]} "
            f"CLEVERTAP_API_URL={emu.url}",
            flush=True,
        )

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        emu.server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        emu.server.server_close()
        if record_file is not None:
            record_file.close()
    return EXIT_OK


REDIS_URL_ARG = arg(
    "--redis-url", default=None, help="use this Redis instead of starting one (its database is flushed!)"
)


def _bench(name: str) -> Handler:
    """Run ``pipeline.local.bench.<name>``, imported only when the benchmark runs."""

    def run(args: argparse.Namespace) -> int:
        from pipeline.local import bench

        return int(getattr(bench, name)(args))

    return run


verb(
    "bench-emulator",
    "Measure the emulator's throughput: concurrent clients sending 1,000-record uploads, zero latency.",
    arg("--concurrency", type=int, default=15, help="concurrent clients"),
    arg("--seconds", type=float, default=5.0, help="seconds per run"),
    arg("--runs", type=int, default=3, help="runs; the median is reported"),
)(_bench("bench_emulator"))
verb(
    "bench-deliver",
    "Measure delivery: records/s against an emulator answering in --latency-ms with 15 slots, and worker "
    "CPU per delivered record, with a real celery worker and beat (an embedded Redis unless --redis-url).",
    arg("--records", type=int, default=150_000, help="records to queue and deliver"),
    arg("--latency-ms", type=int, default=1000, help="emulator latency per upload"),
    arg("--jitter-ms", type=int, default=0, help="random extra latency per upload, 0..N ms"),
    arg("--pool", default="threads", help="celery worker pool"),
    arg("--concurrency", type=int, default=16, help="celery worker concurrency"),
    arg("--workers", type=int, default=1, help="celery worker processes"),
    arg("--warmup", type=float, default=3.0, help="seconds for the worker to start before measuring"),
    REDIS_URL_ARG,
)(_bench("bench_deliver"))
verb(
    "bench-ingest",
    "Measure ingest (validate + map + queue) events/s on one core against a real Redis (an embedded one "
    "unless --redis-url).",
    arg("--events", type=int, default=50_000, help="events per run"),
    arg("--runs", type=int, default=5, help="runs; the median is reported"),
    REDIS_URL_ARG,
)(_bench("bench_ingest"))


@verb(
    "bench-collect",
    "Measure one collector process (clevertap-pipeline collect): events/s accepted in Segment batches of "
    "100, its CPU per event against the CLI ingest path's, and p50/p99 request latency at half that rate; "
    "then the browser shape (one event a request, as a page sends, against a bare Starlette endpoint on the "
    "same uvicorn) and the anonymous hold's Redis bytes per held event.",
    arg("--seconds", type=float, default=5.0, help="seconds per phase"),
    arg("--shape", choices=("batch", "browser", "both"), default="both", help="which request shape"),
    arg("--threads", type=int, default=4, help="client threads (keep-alive connections) for the batch shape"),
    arg(
        "--browser-connections",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[4, 64],
        help="the browser shape's client connections, comma separated: a run each (16 from each address)",
    ),
    arg("--runs", type=int, default=3, help="runs; medians are reported"),
    REDIS_URL_ARG,
)
def bench_collect(args: argparse.Namespace) -> int:
    from pipeline.local.bench_collect import bench_collect as run

    return run(args)


@verb(
    "bench-share",
    "Measure delivery to an account another client shares: the emulator keeps --held of its 15 slots for "
    "the other; a real worker and beat deliver. Prints the 429s over the run and after its first 30 s, and "
    "the throughput against what the other client leaves.",
    arg("--held", type=int, default=5, help="slots the other client holds"),
    arg("--seconds", type=float, default=95.0, help="about how long the run lasts (sets the records queued)"),
    arg("--latency-ms", type=int, default=1000, help="emulator latency per upload"),
    arg("--batch-size", type=int, default=100, help="records a request"),
    REDIS_URL_ARG,
)
def bench_share(args: argparse.Namespace) -> int:
    from pipeline.local.bench_share import bench_share as run

    return run(args)


@verb(
    "bench-cluster",
    "Measure the store on one Redis and on Redis Clusters of 1 and 3 primaries (started here): ingest "
    "events/s and delivered records/s with three integrations, and what redis_wait_replicas = 1 costs.",
    arg("--events", type=int, default=20_000, help="events into each of the three integrations"),
    arg("--runs", type=int, default=3, help="ingest runs per layout; medians are reported"),
)
def bench_cluster(args: argparse.Namespace) -> int:
    from pipeline.local.bench_cluster import bench_cluster as run

    return run(args)


@verb(
    "bench-forget",
    "Measure forgetting one user with a large backlog queued for others (an embedded Redis): the time it "
    "takes, the longest single Redis call meanwhile (SLOWLOG), and a live ingest's latency beside it.",
    arg("--records", type=int, default=1_000_000, help="pending records queued for others"),
    arg("--theirs", type=int, default=100, help="of them, the user's own, spread through the queue"),
    arg("--batches", type=int, default=30, help="open batches of 1,000 records"),
    arg("--letters", type=int, default=10_000, help="dead letters (and identity-map entries)"),
)
def bench_forget(args: argparse.Namespace) -> int:
    from pipeline.local.bench_forget import bench_forget as run

    return run(args)


@verb(
    "bench-import",
    "Measure imports: CSV rows/s parsed, mapped and queued beside JSON events/s ingested (same sitting); an "
    "import's delivered rows/s at a 1 s API beside a live trickle for the same account, the trickle's "
    "p50/p99, and a 3-in-flight uploader; Redis's peak memory during a 5,000,000-row import.",
    arg("--parse-rows", type=int, default=100_000, help="rows for the parsing figure"),
    arg("--rounds", type=int, default=3, help="rounds of the parsing figure (medians)"),
    arg("--rows", type=int, default=200_000, help="rows for the delivery figure"),
    arg("--latency-ms", type=int, default=1000, help="the emulator's API latency for the delivery figure"),
    arg("--memory-rows", type=int, default=5_000_000, help="rows for the memory figure (0: skip it)"),
    arg("--skip-parse", action="store_true", help="skip the parsing figure"),
    arg("--skip-delivery", action="store_true", help="skip the delivery figure"),
)
def bench_import(args: argparse.Namespace) -> int:
    from pipeline.local.bench_import import bench_import as run

    return run(args)


@verb(
    "bench-console",
    "Measure the console's pages with many dead letters (an embedded Redis): a dead-letter page unfiltered "
    "and filtered, and the integrations page.",
    arg("--letters", type=int, default=100_000, help="dead letters to store"),
)
def bench_console(args: argparse.Namespace) -> int:
    from pipeline.local.bench_console import bench_console as run

    return run(args)


@verb(
    "outage",
    "A store outage during delivery: Redis SIGKILLed at a third delivered and restarted from its AOF a few "
    "seconds later, the emulator answering slowly; prints the accounting of every event and the duplicates.",
    arg("--events", type=int, default=30_000, help="traced events to ingest"),
    arg("--workers", type=int, default=3, help="worker processes (8 threads each)"),
    arg("--latency-ms", type=int, default=80, help="the emulator's answer time"),
    arg("--down", type=float, default=3.0, help="seconds Redis stays down"),
)
def outage(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.local.faults import store_outage

    with tempfile.TemporaryDirectory(prefix="ctp-outage-") as tmp:
        accounting = store_outage(
            Path(tmp), args.events, args.workers, args.latency_ms, args.down,
            progress=lambda text: print(text, flush=True),
        )  # fmt: skip
    print(accounting.summary())
    return EXIT_OK if accounting.ok and accounting.duplicates == 0 else EXIT_FAILED


@verb(
    "soak",
    "Soak: traced events through a real pipeline (own Redis with AOF, the emulator with 503s, 429s and cut "
    "connections, celery workers and beat) while workers are SIGKILLed and Redis restarted; prints "
    "records/s, duplicates, Redis peak memory, worker peak RSS and the exact accounting of every event.",
    arg("--events", type=int, default=1_000_000, help="traced events to ingest"),
    arg("--workers", type=int, default=2, help="worker processes (threads pool, 16 each)"),
    arg("--kill-every", type=float, default=15.0, help="SIGKILL a worker mid-send every this many seconds"),
    arg("--redis-restarts", type=int, default=1, help="times Redis is SIGKILLed and restarted"),
    arg("--seed", type=int, default=1, help="seed for faults and which worker dies"),
    arg("--data-dir", default=None, help="keep the run's Redis, logs and records here (default: a temp dir)"),
)
def soak(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.local.faults import soak as run_soak

    with tempfile.TemporaryDirectory(prefix="ctp-soak-") as tmp:
        workdir = Path(args.data_dir or tmp)
        figures = run_soak(
            workdir, args.events, args.workers, args.kill_every, args.redis_restarts, args.seed,
            progress=lambda text: print(text, flush=True),
        )  # fmt: skip
    print(figures.report())
    return EXIT_OK if figures.accounting.ok else EXIT_FAILED


@verb(
    "bench-tenants",
    "Many accounts at once: ten accounts, two integrations each, one with a big backlog, one whose API "
    "answers in 5 s, one down, one shared with another client, the rest trickling; prints per account "
    "records/s against its ceiling, p50/p99 ingest-to-delivered latency, 429s and peak in flight, and "
    "overall the peak send-queue length, worker CPU per record and Redis memory per queued record.",
    arg("--backlog", type=int, default=1_000_000, help="records queued for the big-backlog integration"),
    arg("--shared-backlog", type=int, default=500_000, help="records queued for the shared account's t04a"),
    arg("--seconds", type=float, default=60.0, help="the measured window"),
    arg("--latency-ms", type=int, default=1000, help="API latency of the healthy accounts"),
    arg("--trickle", type=float, default=5.0, help="events/s each trickling integration sends"),
    arg("--pool", default="gevent", help="celery worker pool (gevent or threads)"),
    arg("--concurrency", type=int, default=200, help="celery worker concurrency"),
    arg("--baseline", action="store_true", help="no slow or down account: what the others do without them"),
)
def bench_tenants(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.local.tenants import run_tenants

    with tempfile.TemporaryDirectory(prefix="ctp-tenants-") as tmp:
        figures = run_tenants(
            Path(tmp), args.backlog, args.shared_backlog, args.seconds, args.latency_ms, args.trickle,
            args.pool, args.concurrency,
            progress=lambda text: print(text, flush=True), neighbours=not args.baseline,
        )  # fmt: skip
    print(figures.table())
    return EXIT_OK
