"""The ``clevertap-pipeline`` command (also ``python -m pipeline``). Thin: parsing and printing only."""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import redis

from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, InputError, UnknownIntegration

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings() -> Settings:
    return load_settings()


# ---------------------------------------------------------------------------------------------- input


def read_events(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, event)`` from JSON lines or one JSON array (numbered by element, from 1).

    A line that is not JSON yields a bad-input marker that ingest rejects with the parse error.
    """
    from pipeline.ingest import bad_input

    head = stream.peek(64)[:64] if isinstance(stream, io.BufferedReader) else b""
    if head.lstrip().startswith(b"["):
        data = stream.read()
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"input starts with '[' but is not a JSON array: {exc}") from None
        yield from enumerate(items, start=1)
        return
    for n, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            yield n, orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            snippet = text[:80].decode("utf-8", "replace")
            yield n, bad_input(snippet, f"not JSON: {exc} (line starts {snippet!r})")


def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


class Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, label: str, total_bytes: int | None, stream: IO[str] = sys.stderr) -> None:
        self.label, self.total, self.stream = label, total_bytes, stream
        self.enabled = stream.isatty()
        self.last = 0.0

    def update(self, text: str, done_bytes: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.1):
            return
        self.last = now
        bar = ""
        if self.total and done_bytes is not None:
            frac = min(1.0, done_bytes / self.total)
            filled = int(frac * 24)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {frac:4.0%} "
        self.stream.write(f"\r{self.label} {bar}{text}\x1b[K")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a bad input line), never glued onto the bar."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.last = 0.0  # redraw the bar on the next update
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# -------------------------------------------------------------------------------------------- verbs


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings()
    print(orjson.dumps(settings.public_dict(), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _ingestor(settings: Settings, integration: str) -> Any:
    from pipeline.ingest import Ingestor, store_for

    return Ingestor(store_for(settings), settings.integration(integration))


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest import CHUNK, IngestResult, chunked

    settings = _settings()
    ingestor = _ingestor(settings, args.integration)
    stream = _open_input(args.file)
    total_bytes = os.fstat(stream.fileno()).st_size if args.file != "-" else None
    progress = Progress("ingest", total_bytes or None)
    total = IngestResult()

    def show(force: bool = False) -> None:
        progress.update(
            f"{total.accepted:,} accepted  {total.filtered:,} filtered  {total.duplicate:,} duplicate  "
            f"{total.rejected:,} rejected",
            stream.tell() if args.file != "-" else None,
            force,
        )

    try:
        for chunk in chunked(read_events(stream), CHUNK):
            res = ingestor.ingest_chunk(chunk)
            for rej in res.rejections:
                progress.message(f"line {rej.index}: rejected: {'; '.join(rej.reasons)}")
            res.rejections.clear()  # reported; keep memory flat on big inputs
            total.add(res)
            show()
        show(force=True)  # the final state, whatever the throttle skipped
    finally:
        progress.close()
        if args.file != "-":
            stream.close()
    counts = total.counts()
    if args.json:
        print(orjson.dumps(counts).decode())
    else:
        print(
            f"accepted {total.accepted}, filtered {total.filtered}, duplicate {total.duplicate}, "
            f"rejected {total.rejected} ({total.records} records queued for integration "
            f"{args.integration!r}; rejected events are kept as dead letters)"
        )
    return EXIT_FAILED if args.strict and total.rejected else EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    settings = _settings()
    ingestor = _ingestor(settings, args.integration)
    check_store = True
    try:
        ingestor.store.r.ping()
    except redis.RedisError:
        check_store = False
        _err(
            "preview: Redis is not reachable, so identities remembered from earlier identify calls and "
            "messageIds already seen are not taken into account"
        )
    stream = _open_input(args.file)
    try:
        out = sys.stdout
        for outcome in ingestor.preview(read_events(stream), check_store=check_store):
            line: dict[str, Any] = {
                "line": outcome.index,
                "outcome": outcome.outcome,
                "records": outcome.records,
            }
            if outcome.reasons:
                line["reason"] = "; ".join(outcome.reasons)
            out.write(orjson.dumps(line).decode() + "\n")
    finally:
        if args.file != "-":
            stream.close()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.ingest import store_for
    from pipeline.status import integration_status

    settings = _settings()
    names = [args.integration] if args.integration else sorted(settings.integrations)
    store = store_for(settings)
    status = {name: integration_status(settings, store, name) for name in names}
    if args.json:
        print(orjson.dumps(status).decode())
        return EXIT_OK
    for name, s in status.items():
        q, c = s["queues"], s["counters"]
        print(f"integration {name} (account {s['account_id']})")
        print(
            f"  queued {q['pending']:,} records; {q['open_batches']} open and {q['held_batches']} held "
            "batches; "
            f"in flight {s['in_flight']} (peak {s['peak_in_flight']})"
        )
        print(
            f"  ingested: accepted {c.get('accepted', 0):,}, filtered {c.get('filtered', 0):,}, "
            f"duplicate {c.get('duplicate', 0):,}, rejected at mapping {c.get('rejected_mapping', 0):,}"
        )
        print(
            f"  delivered {c.get('delivered', 0):,} records in {c.get('batches_sent', 0):,} batches; "
            f"{c.get('batches_partial', 0)} partial; rejected by CleverTap {c.get('rejected_api', 0):,}; "
            f"retries: {c.get('retries_throttles', 0)} throttled, {c.get('retries_failures', 0)} failed; "
            f"given up {c.get('batches_given_up', 0)}"
        )
        if s["auth"] != "ok":
            print(f"  AUTHENTICATION FAILING since {s['auth'].get('since')}: {s['auth'].get('reason')}")
        for key, d in sorted(s["dead_letters"].items()):
            print(f"  dead letters {key}: {d['count']:,}, e.g. {d['example'][:160]}")
    return EXIT_OK


def cmd_dead_list(args: argparse.Namespace) -> int:
    from pipeline.deadletters import iter_dead_letters
    from pipeline.ingest import store_for

    settings = _settings()
    settings.integration(args.integration)
    entries = iter_dead_letters(store_for(settings), args.integration, args.stage, args.code)
    for entry in itertools.islice(entries, args.limit):
        print(orjson.dumps(entry).decode())
    return EXIT_OK


def _selection(args: argparse.Namespace) -> list[str] | None:
    if bool(args.id) == bool(args.all):
        raise InputError("give --id ID (repeatable) or --all (optionally with --stage/--code)")
    return list(args.id) if args.id else None


def cmd_dead_replay(args: argparse.Namespace) -> int:
    from pipeline.deadletters import replay
    from pipeline.ingest import store_for

    settings = _settings()
    ids = _selection(args)
    renames = {}
    for pair in args.rename_event:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise InputError(f"--rename-event must be OLD=NEW, got {pair!r}")
        renames[old] = new
    res = replay(
        store_for(settings), settings.integration(args.integration), ids, args.stage, args.code, renames
    )
    print(
        orjson.dumps(
            {
                "replayed_records": res.replayed_records,
                "remapped_events": res.remapped_events,
                "rejected_again": res.rejected_again,
                "missing": res.missing,
            }
        ).decode()
    )
    return EXIT_FAILED if res.missing else EXIT_OK


def cmd_dead_drop(args: argparse.Namespace) -> int:
    from pipeline.deadletters import iter_dead_letters
    from pipeline.ingest import store_for

    settings = _settings()
    settings.integration(args.integration)
    store = store_for(settings)
    ids = _selection(args)
    if ids is None:
        ids = [e["id"] for e in iter_dead_letters(store, args.integration, args.stage, args.code)]
    dropped = sum(
        store.drop_dead_letters(args.integration, ids[i : i + 500]) for i in range(0, len(ids), 500)
    )
    print(orjson.dumps({"dropped": dropped}).decode())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(args.events, args.timeout)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import interrupts_as_keyboard_interrupt, start_stack

    data_dir = Path(args.data_dir).resolve()
    env = dict(os.environ)
    if not args.emulator:
        load_settings(env)  # fail fast, with every error, before starting anything
    with interrupts_as_keyboard_interrupt():
        stack = None
        try:
            stack = start_stack(
                data_dir,
                base_env=env,
                persistent_redis=True,
                emulator_flags=tuple(args.emulator_flag) if args.emulator else None,
                workers=args.workers,
                pool=args.pool,
                concurrency=args.concurrency,
            )
            load_settings(stack.env)
            if stack.redis is not None:
                print(
                    f"embedded Redis (AOF in {data_dir / 'redis'}): REDIS_URL={stack.redis_url}", flush=True
                )
            if stack.emulator is not None:
                records = data_dir / "emulator-records.jsonl"
                print(f"emulator: {stack.emulator.url} (records also in {records})", flush=True)
            for child in stack.group.children:
                print(f"started {child.name} pid {child.pid} (log {child.log_path})", flush=True)
            print(
                "running; Ctrl-C or SIGTERM stops everything "
                "(in-flight batches are retried on the next start)",
                flush=True,
            )
            while True:
                stack.check()
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", flush=True)
            return EXIT_OK
        except RuntimeError as exc:
            _err(f"error: {exc}")
            return EXIT_FAILED
        finally:
            if stack is not None:
                stack.stop()
            print("stopped", flush=True)


def cmd_emulator(args: argparse.Namespace) -> int:
    import signal

    from pipeline.emulator import DEMO_ACCOUNT, Emulator, Faults, parse_account, parse_outage

    try:
        accounts = dict(parse_account(a) for a in args.account) if args.account else dict([DEMO_ACCOUNT])
        outages = tuple(parse_outage(o) for o in args.outage)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    faults = Faults(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        error_rate=args.error_rate,
        throttle_rate=args.throttle_rate,
        retry_after=args.retry_after,
        cut_rate=args.cut_rate,
        outages=outages,
        concurrency=args.concurrency,
        max_properties=args.max_properties,
        restricted_events=frozenset(n.replace(" ", "").lower() for n in args.restricted_event),
    )
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


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def cmd_bench_emulator(args: argparse.Namespace) -> int:
    from pipeline.bench import bench_emulator

    return bench_emulator(args)


def cmd_bench_deliver(args: argparse.Namespace) -> int:
    from pipeline.bench import bench_deliver

    return bench_deliver(args)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from pipeline.bench import bench_ingest

    return bench_ingest(args)


# --------------------------------------------------------------------------------------------- parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clevertap-pipeline",
        description="Deliver Datafly/Segment-style events to CleverTap's Upload Events API.\n\n"
        "Configuration comes from CLEVERTAP_* environment variables or the TOML file named by "
        "CLEVERTAP_PIPELINE_CONFIG (see README, 'Configuration reference').",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    verb(
        "check-config",
        "Validate the configuration and print it with the passcode masked (exit 2 on errors).",
        cmd_check_config,
    )

    p = verb("ingest", "Validate, map and queue events from JSON lines or a JSON array.", cmd_ingest)
    p.add_argument("file", nargs="?", default="-", help="input file, or - for standard input")
    p.add_argument("--integration", "-i", default="default", help="integration to queue for")
    p.add_argument("--json", action="store_true", help="print one JSON summary object as the last line")
    p.add_argument("--strict", action="store_true", help="exit 1 when any event was rejected")

    p = verb("preview", "Map events without queueing: one JSON line per input event.", cmd_preview)
    p.add_argument("file", nargs="?", default="-", help="input file, or - for standard input")
    p.add_argument("--integration", "-i", default="default", help="integration whose mappings to use")

    p = verb(
        "demo",
        "Run the whole pipeline on embedded defaults (its own Redis, the emulator, a real celery worker and "
        "beat), ingest a bundled sample and print what happened. Stops everything it started.",
        cmd_demo,
    )
    p.add_argument("--events", type=int, default=3000, help="sample events to ingest (plus a few bad ones)")
    p.add_argument("--timeout", type=float, default=120, help="give up after this many seconds")

    p = verb(
        "run",
        "Run a worker and beat on this machine (and an embedded Redis with AOF when REDIS_URL is unset), "
        "sending to the configured CleverTap account, or to a local emulator with --emulator.",
        cmd_run,
    )
    p.add_argument("--emulator", action="store_true", help="start a local emulator and send to it")
    p.add_argument(
        "--emulator-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for the emulator, e.g. --emulator-flag=--latency-ms=200 (repeatable)",
    )
    p.add_argument(
        "--data-dir", default=".clevertap-pipeline", help="embedded Redis data, logs, beat schedule"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--pool", default="threads", help="celery pool of each worker")
    p.add_argument("--concurrency", type=int, default=16, help="threads (or processes) per worker")

    p = verb(
        "status", "Queues, counters, authentication state, in-flight tokens and dead letters.", cmd_status
    )
    p.add_argument("--integration", "-i", default=None, help="one integration (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = verb(
        "dead-letters",
        "List, replay or drop dead letters: events that could not be mapped (stage mapping) and rows "
        "CleverTap refused or that gave up (stage api).",
        None,
    )
    dl = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def dl_verb(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        q = dl.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        q.set_defaults(func=func)
        q.add_argument("--integration", "-i", default="default", help="integration")
        q.add_argument("--stage", choices=("mapping", "api"), default=None, help="only this stage")
        q.add_argument("--code", type=int, default=None, help="only this CleverTap code (api stage)")
        return q

    q = dl_verb("list", "Print dead letters as JSON lines, oldest first.", cmd_dead_list)
    q.add_argument("--limit", type=int, default=100, help="at most this many")
    q = dl_verb(
        "replay",
        "Queue dead letters again: api rows as they are, mapping events through the current mappings "
        "(fix the configuration first). Each one moves atomically.",
        cmd_dead_replay,
    )
    q.add_argument("--id", action="append", default=[], help="a dead letter id (repeatable)")
    q.add_argument("--all", action="store_true", help="every dead letter matching --stage/--code")
    q.add_argument(
        "--rename-event",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rename the event of refused records as they are queued again (after renaming it in the "
        "mappings; repeatable)",
    )
    q = dl_verb("drop", "Delete dead letters for good.", cmd_dead_drop)
    q.add_argument("--id", action="append", default=[], help="a dead letter id (repeatable)")
    q.add_argument("--all", action="store_true", help="every dead letter matching --stage/--code")

    p = verb(
        "emulator",
        "Run a CleverTap Upload API emulator: a real HTTP server answering POST /1/upload as CleverTap does "
        "(401, 400, per-record codes 509/512/513/522/523/524/525, 429 past the concurrency limit), "
        "with fault "
        "injection. GET /_emulator/stats and /_emulator/records show what arrived; POST /_emulator/faults "
        "changes faults while it runs; POST /_emulator/reset clears.",
        cmd_emulator,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one (printed)")
    p.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="ID:PASSCODE",
        help="an account it accepts (repeatable); none: one demo account, printed",
    )
    p.add_argument("--concurrency", type=int, default=15, help="requests in flight per account before 429")
    p.add_argument("--latency-ms", type=_non_negative, default=0.0, help="fixed latency per upload")
    p.add_argument("--jitter-ms", type=_non_negative, default=0.0, help="random extra latency, 0..N ms")
    p.add_argument("--error-rate", type=_share, default=0.0, help="share of uploads answered 500/503")
    p.add_argument("--throttle-rate", type=_share, default=0.0, help="share of uploads answered 429")
    p.add_argument(
        "--retry-after", type=_non_negative, default=None, help="Retry-After seconds on injected 429s"
    )
    p.add_argument(
        "--cut-rate",
        type=_share,
        default=0.0,
        help="share of uploads whose records are stored, then the connection is cut without an answer",
    )
    p.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="START:DURATION",
        help="answer 503 from START to START+DURATION seconds after start (repeatable)",
    )
    p.add_argument("--max-properties", type=int, default=256, help="evtData properties before code 522")
    p.add_argument(
        "--restricted-event",
        action="append",
        default=[],
        metavar="NAME",
        help="another event name answered 513 (some accounts restrict 'Web Page Viewed')",
    )
    p.add_argument("--record-file", default=None, help="append every stored record here as JSON lines")
    p.add_argument("--seed", type=int, default=None, help="seed for injected faults")

    p = verb(
        "bench-emulator",
        "Measure the emulator's throughput: concurrent clients sending 1,000-record uploads, zero latency.",
        cmd_bench_emulator,
    )
    p.add_argument("--concurrency", type=int, default=15, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per run")
    p.add_argument("--runs", type=int, default=3, help="runs; the median is reported")

    p = verb(
        "bench-deliver",
        "Measure delivery: records/s against an emulator answering in --latency-ms with 15 slots, and worker "
        "CPU per delivered record, with a real celery worker and beat (an embedded Redis unless "
        "--redis-url).",
        cmd_bench_deliver,
    )
    p.add_argument("--records", type=int, default=150_000, help="records to queue and deliver")
    p.add_argument("--latency-ms", type=int, default=1000, help="emulator latency per upload")
    p.add_argument("--pool", default="threads", help="celery worker pool")
    p.add_argument("--concurrency", type=int, default=16, help="celery worker concurrency")
    p.add_argument(
        "--warmup", type=float, default=3.0, help="seconds for the worker to start before measuring"
    )
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")

    p = verb(
        "bench-ingest",
        "Measure ingest (validate + map + queue) events/s on one core against a real "
        "Redis (an embedded one unless --redis-url).",
        cmd_bench_ingest,
    )
    p.add_argument("--events", type=int, default=50_000, help="events per run")
    p.add_argument("--runs", type=int, default=5, help="runs; the median is reported")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _err("configuration errors:")
        for path, msg in exc.errors:
            _err(f"  {path}: {msg}")
        return EXIT_CONFIG
    except UnknownIntegration as exc:
        _err(f"error: {exc}")
        return EXIT_CONFIG
    except InputError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    except redis.RedisError as exc:
        _err(f"error: Redis is not reachable ({type(exc).__name__}: {exc}); check REDIS_URL")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
