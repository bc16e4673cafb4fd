"""The ``clevertap-pipeline`` command (also ``python -m pipeline``). Thin: parsing and printing only.

Each verb is a function registered with :func:`verb`, its arguments declared beside it. The product's
verbs are here; the local tooling (``pipeline.local``: emulator, demo, run, benchmarks) registers its own
through the ``clevertap_pipeline.verbs`` entry point, so the product never imports the tooling.
:func:`verbs` is the registry, for ``--help`` and the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import IO, Any

import orjson
import redis

from pipeline.config import Settings
from pipeline.errors import ConfigError, InputError, QueueFull, UnknownIntegration
from pipeline.saved import load_all as load_settings
from pipeline.store import Store

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3
VERB_ENTRY_POINTS = "clevertap_pipeline.verbs"

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call, declared beside the verb that takes it."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Verb:
    name: str  # "status", or "dead-letters list" for an action of a verb group
    help: str
    run: Handler
    args: tuple[Arg, ...]


_VERBS: dict[str, Verb] = {}
_GROUPS: dict[str, str] = {}  # verb group -> its help


def verb(name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
    """Register ``name`` (``"group action"`` for an action of a group) with its help and arguments."""

    def register(run: Handler) -> Handler:
        if name in _VERBS:
            raise ValueError(f"verb {name!r} is registered twice")
        _VERBS[name] = Verb(name, help, run, args)
        return run

    return register


def verb_group(name: str, help: str) -> None:
    _GROUPS[name] = help


def verbs() -> dict[str, Verb]:
    """Every verb: the product's and the ones the installed tooling registers."""
    _load_plugins()
    return dict(_VERBS)


_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=VERB_ENTRY_POINTS):
            try:
                ep.load()
            except Exception as exc:  # a broken tool must not take the product's verbs down with it
                err(f"warning: the verbs of {ep.value} are unavailable ({type(exc).__name__}: {exc})")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clevertap-pipeline",
        description="Deliver Datafly/Segment-style events to CleverTap's Upload Events API.\n\n"
        "Configuration comes from CLEVERTAP_* environment variables or the TOML file named by "
        "CLEVERTAP_PIPELINE_CONFIG (see docs/configuration.md).",
        formatter_class=_Formatter,
    )
    top = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    groups: dict[str, Any] = {}
    for v in sorted(verbs().values(), key=lambda v: v.name):
        group, _, action = v.name.partition(" ")
        sub = top
        if action:
            if group not in groups:
                help_ = _GROUPS.get(group, "")
                gp = top.add_parser(group, help=help_, description=help_, formatter_class=_Formatter)
                groups[group] = gp.add_subparsers(dest="action", required=True, metavar="ACTION")
            sub = groups[group]
        p = sub.add_parser(action or group, help=v.help, description=v.help, formatter_class=_Formatter)
        p.set_defaults(run=v.run)
        for a in v.args:
            p.add_argument(*a.flags, **a.options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        err("configuration errors:")
        for path, msg in exc.errors:
            err(f"  {path}: {msg}")
        return EXIT_CONFIG
    except UnknownIntegration as exc:
        err(f"error: {exc}")
        return EXIT_CONFIG
    except InputError as exc:
        err(f"error: {exc}")
        return EXIT_FAILED
    except QueueFull as exc:
        err(f"error: {exc}")
        return EXIT_UNAVAILABLE
    except redis.RedisError as exc:
        err(f"error: Redis is not reachable ({type(exc).__name__}: {exc}); check REDIS_URL")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        err("interrupted")
        return 130


# ------------------------------------------------------------------------------------------- helpers


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def store_of(settings: Settings) -> Store:
    return Store.shared(settings.redis_url, settings.key_prefix)


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


def open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


INPUT = arg("file", nargs="?", default="-", help="input file, or - for standard input")


def integration_arg(help: str = "integration", default: str | None = "default") -> Arg:
    return arg("--integration", "-i", default=default, help=help)


# ---------------------------------------------------------------------------------------------- verbs


@verb("check-config", "Validate the configuration and print it with the passcode masked (exit 2 on errors).")
def check_config(args: argparse.Namespace) -> int:
    print(orjson.dumps(load_settings().public_dict(), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


@verb(
    "ingest",
    "Validate, map and queue events from JSON lines or a JSON array.",
    INPUT,
    integration_arg("integration to queue for"),
    arg("--json", action="store_true", help="print one JSON summary object as the last line"),
    arg("--strict", action="store_true", help="exit 1 when any event was rejected"),
)
def ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.ingest import CHUNK, Ingestor, IngestResult, chunked

    settings = load_settings()
    ingestor = Ingestor(store_of(settings), settings.integration(args.integration))
    stream = open_input(args.file)
    from_file = args.file != "-"
    total = IngestResult()
    # A bar on a terminal only (disable=None); by bytes of a file, by events from standard input.
    bar = tqdm(
        desc="ingest",
        total=os.fstat(stream.fileno()).st_size if from_file else None,
        unit="B" if from_file else " events",
        unit_scale=from_file,
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
    )
    try:
        with bar:
            for chunk in chunked(read_events(stream), CHUNK):
                res = ingestor.ingest_chunk(chunk)
                for rej in res.rejections:
                    bar.write(f"line {rej.index}: rejected: {'; '.join(rej.reasons)}", file=sys.stderr)
                for warned in res.warnings:
                    bar.write(f"line {warned.index}: sent, but {'; '.join(warned.reasons)}", file=sys.stderr)
                res.rejections.clear()  # reported; keep memory flat on big inputs
                res.warnings.clear()
                total.add(res)
                bar.update(stream.tell() - bar.n if from_file else len(chunk))
                bar.set_postfix_str(
                    f"{total.accepted:,} accepted, {total.filtered:,} filtered, "
                    f"{total.duplicate:,} duplicate, {total.rejected:,} rejected"
                    + (f", {total.fields_dropped:,} fields dropped" if total.fields_dropped else ""),
                    refresh=False,
                )
    finally:
        if from_file:
            stream.close()
    if args.json:
        print(orjson.dumps(total.counts()).decode())
    else:
        print(
            f"accepted {total.accepted}, filtered {total.filtered}, duplicate {total.duplicate}, "
            f"rejected {total.rejected} ({total.records} records queued for integration "
            f"{args.integration!r}; rejected events are kept as dead letters)"
            + (
                f"; {total.fields_dropped} invalid profile values left out (preview shows which)"
                if total.fields_dropped
                else ""
            )
        )
    return EXIT_FAILED if args.strict and total.rejected else EXIT_OK


@verb(
    "preview",
    "Map events without queueing: one JSON line per input event.",
    INPUT,
    integration_arg("integration whose mappings to use"),
)
def preview(args: argparse.Namespace) -> int:
    from pipeline.ingest import Ingestor

    settings = load_settings()
    ingestor = Ingestor(store_of(settings), settings.integration(args.integration))
    check_store = True
    try:
        ingestor.store.r.ping()
    except redis.RedisError:
        check_store = False
        err(
            "preview: Redis is not reachable, so identities remembered from earlier identify calls and "
            "messageIds already seen are not taken into account"
        )
    stream = open_input(args.file)
    try:
        for line in ingestor.preview(read_events(stream), check_store=check_store):
            out: dict[str, Any] = {"line": line.index, "outcome": line.status.value, "records": line.records}
            if line.reasons:
                out["reason"] = "; ".join(line.reasons)
            if line.warnings:
                out["warnings"] = line.warnings
            sys.stdout.write(orjson.dumps(out).decode() + "\n")
    finally:
        if args.file != "-":
            stream.close()
    return EXIT_OK


@verb(
    "status",
    "Queues, counters, authentication state, in-flight tokens and dead letters.",
    integration_arg("one integration (default: all)", default=None),
    arg("--json", action="store_true", help="print one JSON object (with --watch: one per line)"),
    arg(
        "--watch",
        action="store_true",
        help="refresh in place every --interval seconds, with delivered records/s (Ctrl-C to stop)",
    ),
    arg("--interval", type=float, default=2.0, help="seconds between refreshes with --watch"),
    arg("--count", type=int, default=0, help="with --watch: stop after this many refreshes (0: never)"),
)
def status(args: argparse.Namespace) -> int:
    from pipeline.status import integration_status

    if args.interval <= 0:
        raise InputError(f"--interval must be above 0, got {args.interval}")
    settings = load_settings()
    names = [args.integration] if args.integration else sorted(settings.integrations)
    store = store_of(settings)
    previous: dict[str, tuple[float, int]] = {}
    refreshes = 0
    tty = sys.stdout.isatty()
    while True:
        found = {name: integration_status(settings, store, name) for name in names}
        if args.watch:
            for name, s in found.items():  # the rate over the last interval, from Redis's counter
                at, delivered = s["as_of"], s["delivered"]
                if name in previous and at > previous[name][0]:
                    s["delivered_per_s"] = round(
                        (delivered - previous[name][1]) / (at - previous[name][0]), 1
                    )
                else:
                    s["delivered_per_s"] = None
                previous[name] = (at, delivered)
        if args.json:
            print(orjson.dumps({"integrations": found}).decode(), flush=True)
        else:
            text = "\n".join(_status_text(name, s) for name, s in found.items())
            if args.watch and tty:
                text = "\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + f"every {args.interval:g} s\n" + text
            print(text, flush=True)
        refreshes += 1
        if not args.watch or (args.count and refreshes >= args.count):
            return EXIT_OK
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return EXIT_OK


def _status_text(name: str, s: dict[str, Any]) -> str:
    q, c = s["queues"], s["counters"]
    age = s["oldest_pending_age_s"]
    lines = [
        f"integration {name} (account {s['account_id']})"
        + (f": oldest record waiting {age:.1f} s" if age is not None else "")
    ]
    if "delivered_per_s" in s:
        rate = s["delivered_per_s"]
        lines.append("  delivering " + ("... (measuring)" if rate is None else f"{rate:,.1f} records/s"))
    lines.append(
        f"  queued {q['pending']:,} records; {q['open_batches']} open and {q['held_batches']} held "
        f"batches; in flight {s['in_flight']} (peak {s['peak_in_flight']}, limit {s['effective_limit']}"
        + (
            f" of {s['limit']}: lowered, another client uses the account)"
            if s["effective_limit"] < s["limit"]
            else ")"
        )
    )
    lines.append(
        f"  ingested: accepted {c.get('accepted', 0):,}, filtered {c.get('filtered', 0):,}, "
        f"duplicate {c.get('duplicate', 0):,}, rejected at mapping {c.get('rejected_mapping', 0):,}"
    )
    lines.append(
        f"  delivered {c.get('delivered', 0):,} records in {c.get('batches_sent', 0):,} batches; "
        f"{c.get('batches_partial', 0)} partial; rejected by CleverTap {c.get('rejected_api', 0):,}; "
        f"retries: {c.get('retries_throttles', 0)} throttled, {c.get('retries_failures', 0)} failed; "
        f"given up {c.get('batches_given_up', 0)}"
    )
    if s["fields_dropped"]:
        by_key = ", ".join(f"{k} {n:,}" for k, n in s["fields_dropped_by_key"].items())
        lines.append(f"  invalid profile values left out: {s['fields_dropped']:,} ({by_key})")
    if s["auth"] != "ok":
        lines.append(f"  AUTHENTICATION FAILING since {s['auth'].get('since')}: {s['auth'].get('reason')}")
    if s["last_error"]:
        e = s["last_error"]
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(e["time"])))
        lines.append(f"  last error {when}, batch {e['batch']}: {e['reason'][:200]}")
    for key, d in sorted(s["dead_letters"].items()):
        lines.append(
            f"  dead letters {key}: {d['count']:,}" + (f", e.g. {d['example'][:160]}" if d["example"] else "")
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- dead letters

verb_group(
    "dead-letters",
    "List, replay or drop dead letters: events that could not be mapped (stage mapping) and rows "
    "CleverTap refused or that gave up (stage api).",
)


def _when(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601 with a zone (``2026-11-29T20:00:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be epoch seconds or ISO 8601 with a zone, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"must have a time zone (e.g. Z), got {text!r}")
    return parsed.timestamp()


DEAD_LETTER_FILTERS = (
    integration_arg(),
    arg("--stage", choices=("mapping", "api"), default=None, help="only this stage"),
    arg("--code", type=int, default=None, help="only this CleverTap code (api stage)"),
    arg(
        "--since", type=_when, default=None, help="only dead letters from this time on (epoch s or ISO 8601)"
    ),
    arg("--until", type=_when, default=None, help="only dead letters up to this time"),
)


def _matching(args: argparse.Namespace, store: Store) -> Iterator[dict[str, Any]]:
    from pipeline.deadletters import iter_dead_letters

    return iter_dead_letters(store, args.integration, args.stage, args.code, args.since, args.until)


DEAD_LETTER_SELECTION = (
    arg("--id", action="append", default=[], help="a dead letter id (repeatable)"),
    arg("--all", action="store_true", help="every dead letter matching --stage/--code"),
)


def _selection(args: argparse.Namespace) -> list[str] | None:
    if bool(args.id) == bool(args.all):
        raise InputError("give --id ID (repeatable) or --all (optionally with --stage/--code)")
    return list(args.id) if args.id else None


@verb(
    "dead-letters list",
    "Print dead letters as JSON lines, oldest first.",
    *DEAD_LETTER_FILTERS,
    arg("--limit", type=int, default=100, help="at most this many"),
)
def dead_letters_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.integration(args.integration)
    for entry in itertools.islice(_matching(args, store_of(settings)), args.limit):
        print(orjson.dumps(entry).decode())
    return EXIT_OK


@verb("dead-letters show", "Print one dead letter in full.", integration_arg(), arg("id", help="its id"))
def dead_letters_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.integration(args.integration)
    (raw,) = store_of(settings).dead_letters(args.integration, [args.id])
    if raw is None:
        raise InputError(f"no dead letter {args.id} in integration {args.integration!r}")
    print(orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


@verb("dead-letters count", "Count dead letters by stage and code (with --stage/--code/--since/--until).",
      *DEAD_LETTER_FILTERS)  # fmt: skip
def dead_letters_count(args: argparse.Namespace) -> int:
    from pipeline.deadletters import count

    settings = load_settings()
    settings.integration(args.integration)
    store = store_of(settings)
    counts = count(store, args.integration, args.stage, args.code, args.since, args.until)
    print(orjson.dumps({"total": sum(counts.values()), "by_stage_and_code": counts}).decode())
    return EXIT_OK


@verb(
    "dead-letters export",
    "Write dead letters as JSON lines, oldest first, streaming (flat in memory however many).",
    *DEAD_LETTER_FILTERS,
    arg("--output", "-o", default="-", help="a file, or - for standard output"),
)
def dead_letters_export(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.integration(args.integration)
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    written = 0
    try:
        for entry in _matching(args, store_of(settings)):
            out.write(orjson.dumps(entry) + b"\n")
            written += 1
    finally:
        if args.output != "-":
            out.close()
    err(f"exported {written} dead letters")
    return EXIT_OK


@verb(
    "dead-letters replay",
    "Queue dead letters again: api rows as they are, mapping events through the current mappings "
    "(fix the configuration first). Each one moves atomically.",
    *DEAD_LETTER_FILTERS,
    *DEAD_LETTER_SELECTION,
    arg("--dry-run", action="store_true", help="say what would be replayed, change nothing"),
    arg(
        "--rename-event",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rename the event of refused records as they are queued again (after renaming it in the "
        "mappings; repeatable)",
    ),
)
def dead_letters_replay(args: argparse.Namespace) -> int:
    from pipeline.deadletters import replay

    settings = load_settings()
    ids = _selection(args)
    renames = {}
    for pair in args.rename_event:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise InputError(f"--rename-event must be OLD=NEW, got {pair!r}")
        renames[old] = new
    if args.dry_run:
        return _replay_dry_run(args, store_of(settings), ids)
    res = replay(
        store_of(settings),
        settings.integration(args.integration),
        ids,
        args.stage,
        args.code,
        renames,
        args.since,
        args.until,
    )
    print(
        orjson.dumps(
            {
                "replayed_records": res.replayed_records,
                "remapped_events": res.remapped_events,
                "rejected_again": res.rejected_again,
                "missing": res.missing,
                "unreplayable": res.unreplayable,
                "already_replayed": res.already_replayed,
            }
        ).decode()
    )
    return EXIT_FAILED if res.missing else EXIT_OK


def _replay_dry_run(args: argparse.Namespace, store: Store, ids: list[str] | None) -> int:
    """What a replay would do, changing nothing (streaming: flat in memory however many)."""
    missing: list[str] = []
    if ids is not None:
        raws = store.dead_letters(args.integration, ids)
        entries: Iterable[dict[str, Any]] = [orjson.loads(r) for r in raws if r is not None]
        missing = [i for i, r in zip(ids, raws, strict=True) if r is None]
    else:
        entries = _matching(args, store)
    records = events = 0
    unreplayable = []
    for e in entries:
        if e.get("stage") == "mapping":
            events += 1
        elif e.get("record") is None:
            unreplayable.append(e["id"])
        else:
            records += 1
    print(
        orjson.dumps(
            {
                "dry_run": True,
                "would_replay_records": records,
                "would_remap_events": events,
                "unreplayable": unreplayable,
                "missing": missing,
            }
        ).decode()
    )
    return EXIT_FAILED if missing else EXIT_OK


def _drop(args: argparse.Namespace, store: Store, ids: list[str] | None) -> int:
    from pipeline.deadletters import drop

    return drop(store, args.integration, ids, args.stage, args.code, args.since, args.until)


@verb("dead-letters drop", "Delete dead letters for good.", *DEAD_LETTER_FILTERS, *DEAD_LETTER_SELECTION)
def dead_letters_drop(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.integration(args.integration)
    print(orjson.dumps({"dropped": _drop(args, store_of(settings), _selection(args))}).decode())
    return EXIT_OK


@verb(
    "dead-letters purge",
    "Delete every dead letter matching the filters (all of them without any), after asking; --yes to skip "
    "the question (scripts).",
    *DEAD_LETTER_FILTERS,
    arg("--yes", action="store_true", help="do not ask"),
)
def dead_letters_purge(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.integration(args.integration)
    store = store_of(settings)
    if not args.yes:
        from pipeline.deadletters import count

        n = sum(count(store, args.integration, args.stage, args.code, args.since, args.until).values())
        if not sys.stdin.isatty():
            raise InputError(f"would purge {n} dead letters: add --yes (standard input is not a terminal)")
        answer = input(f"purge {n} dead letters of {args.integration!r} for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            err("nothing purged")
            return EXIT_FAILED
    print(orjson.dumps({"purged": _drop(args, store, None)}).decode())
    return EXIT_OK


# ------------------------------------------------------------------------------------------ debugger


@verb(
    "debugger",
    "The event debugger: the last send attempts of each integration (time, batch, records, attempt, HTTP "
    "status, latency, result) with CleverTap's raw answer. 'debugger show BATCH' prints one batch's attempts "
    "in full.",
    arg(
        "what", nargs="*", metavar="show BATCH", help="show BATCH: every kept attempt of that batch, in full"
    ),
    integration_arg("one integration (default: all)", default=None),
    arg("--failed", action="store_true", help="only attempts that did not deliver every row"),
    arg("--json", action="store_true", help="JSON lines, the raw answer included"),
    arg("--limit", type=int, default=50, help="at most this many attempts"),
)
def debugger(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = store_of(settings)
    names = [args.integration] if args.integration else sorted(settings.integrations)
    for name in names:
        settings.integration(name)
    if args.what:
        if len(args.what) != 2 or args.what[0] != "show":
            raise InputError("usage: debugger show BATCH")
        found = [
            {"integration": n, **e}
            for n in names
            for e in store.debug_entries(n, 100_000)
            if e["batch_id"] == args.what[1]
        ]
        if not found:
            raise InputError(f"no attempt of batch {args.what[1]} is kept (the debugger keeps the last ones)")
        for entry in found:
            with contextlib.suppress(orjson.JSONDecodeError):
                entry["body"] = orjson.loads(entry["body"])
            print(orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    entries = sorted(
        ({"integration": n, **e} for n in names for e in store.debug_entries(n)),
        key=lambda e: -float(e["time"]),
    )
    if args.failed:
        entries = [e for e in entries if e["result"] != "delivered"]
    for e in entries[: args.limit]:
        if args.json:
            print(orjson.dumps(e).decode())
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(e["time"])))
        status = e["http_status"] if e["http_status"] is not None else (e.get("error") or "-")
        print(
            f"{when}  {e['integration']:<12} {e['batch_id']}  {e['records']:>5} records  attempt "
            f"{e['attempt']:<3} HTTP {status}  {e['latency_s']:.2f} s  {e['result']}"
        )
    return EXIT_OK


# ------------------------------------------------------------------------------------------- metrics


@verb(
    "metrics",
    "Serve Prometheus metrics at /metrics, read from Redis at each scrape (every worker on every host "
    "counted once). Loopback only unless --host says otherwise. Names and labels: docs/metrics.md.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=int, default=9464, help="port; 0 picks a free one (printed)"),
)
def metrics(args: argparse.Namespace) -> int:
    import signal

    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from pipeline.metrics import RedisCollector

    settings = load_settings()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(settings, store_of(settings)))
    server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    print(f"metrics on http://{args.host}:{server.server_port}/metrics", flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return EXIT_OK


# ----------------------------------------------------------------------------------------- collector


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {text!r}")
    return int(text)


@verb(
    "collect",
    "Serve the Segment HTTP Tracking API (POST /v1/batch, /v1/track, /v1/identify, /v1/page, /v1/screen, "
    "/v1/alias, /v1/group; GET /health): SDKs pointed here queue their events as ingest does. The write key "
    "(CLEVERTAP_WRITE_KEY, or write_key / write_key_env per integration) authenticates and chooses the "
    "integration. Loopback only unless --host says otherwise.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=_port, default=8088, help="port"),
    arg("--workers", type=int, default=1, help="worker processes (each a core's worth of requests)"),
)
def collect(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.collect_app import MAX_CONNECTIONS, log_config

    if not 1 <= args.workers <= 64:
        raise InputError(f"--workers must be 1-64, got {args.workers}")
    settings = load_settings()  # every error now, before a worker starts
    keyed = sorted(n for n, c in settings.integrations.items() if c.write_key is not None)
    if not keyed:
        raise InputError(
            "no integration has a write key: set CLEVERTAP_WRITE_KEY (or write_key / write_key_env in the "
            "TOML file); the write key is what SDKs send, and it chooses the integration"
        )
    print(
        f"collector on http://{args.host}:{args.port} ({args.workers} worker process"
        f"{'es' if args.workers > 1 else ''}) for integration{'s' if len(keyed) > 1 else ''} "
        f"{', '.join(keyed)}",
        flush=True,
    )
    uvicorn.run(
        "pipeline.collect_app:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        http="httptools",
        loop="uvloop",
        access_log=False,  # an access log line per SDK batch says nothing the counters do not
        server_header=False,
        log_config=log_config(settings.log_format),
        timeout_keep_alive=30,
        timeout_graceful_shutdown=20,
        limit_concurrency=MAX_CONNECTIONS,  # memory stays bounded: at most this many bodies of 500 KB
    )
    return EXIT_OK


# ------------------------------------------------------------------------------------------- console


@verb(
    "console",
    "The management console: integrations (add, edit), field mappings with a preview, the event debugger "
    "and the dead letters, in a browser. Needs CLEVERTAP_CONSOLE_PASSWORD (the login) and "
    "CLEVERTAP_CONSOLE_KEY (a Fernet key: it encrypts the passcodes saved in Redis; workers need it too). "
    "Loopback only unless --host says otherwise.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=_port, default=8089, help="port"),
    arg("--https-only", action="store_true", help="session cookies only over HTTPS (behind TLS)"),
)
def console(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.collect_app import log_config
    from pipeline.config import ENV_CONSOLE_KEY, ENV_CONSOLE_PASSWORD
    from pipeline.config import load_settings as load_base
    from pipeline.console import create_console, session_secret
    from pipeline.saved import LiveSettings, fernet_from

    password = os.environ.get(ENV_CONSOLE_PASSWORD, "")
    if len(password) < 12:
        where = "" if args.host in ("127.0.0.1", "localhost", "::1") else f" (and it listens on {args.host})"
        raise InputError(
            f"set {ENV_CONSOLE_PASSWORD} to the console's password, 12 characters or more{where}: the "
            "console takes actions (saves integrations, replays and purges dead letters)"
        )
    if fernet_from() is None:
        raise InputError(
            f"set {ENV_CONSOLE_KEY} to a Fernet key (python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'): it encrypts the passcodes the console saves, and "
            "every worker needs the same key to send for those integrations"
        )
    live = LiveSettings(load_base)
    app = create_console(
        password, session_secret(password, os.environ[ENV_CONSOLE_KEY]), live, https_only=args.https_only
    )
    print(f"console on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        server_header=False,
        log_config=log_config(live.base.log_format),
        limit_concurrency=100,
        timeout_keep_alive=30,
    )
    return EXIT_OK
