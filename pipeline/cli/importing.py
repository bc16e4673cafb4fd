"""The ``import`` verb: a file of history queued through the integration's backfill lane (resumable, within
``import_window``), and ``import status [ID]``, ``import cancel ID``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import orjson

from pipeline.backfill import ACTIVE, CANCELLED, DONE, ImportInfo
from pipeline.cli.registry import EXIT_FAILED, EXIT_OK, arg, context, err, integration_arg, open_input, verb
from pipeline.errors import InputError
from pipeline.importer import Importer, ImportFailed, Progress, Source, begin
from pipeline.imports import A_YEAR_S, CsvSpec, load_columns, load_schema, summarise

#: Bad rows printed on stderr, at most (all are dead letters, and counted).
PRINTED = 1000
POLL_S = 0.5


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror}") from None


@verb(
    "import",
    "Import history: queue a file's rows through the integration's backfill lane, which sends only what "
    "live traffic leaves. Run the same command again to resume after a kill; `import status [ID]` shows "
    "imports, `import cancel ID` stops one and removes what it had queued.",
    arg("file", help="CSV or JSON lines file, - for standard input (no resume); or status / cancel"),
    arg("import_id", nargs="?", default=None, help="an import's id (with status or cancel)"),
    integration_arg("integration to import for (default: default; status, cancel: every one)", default=None),
    arg("--records", action="store_true", help="JSON lines of ready CleverTap records, sent as they are"),
    arg("--csv", action="store_true", help="a CSV with a header row (the default for a .csv file)"),
    arg("--type", choices=("event", "profile"), default=None, help="CSV: records of this type"),
    arg("--event", default=None, help="CSV: the event's name when no evtName column gives it"),
    arg("--columns", default=None, help="CSV: a JSON file of header -> CleverTap key"),
    arg(
        "--schema",
        default=None,
        help="CSV: a JSON file of column -> type (Float, Integer, Boolean, String, Date, String[])",
    ),
    arg(
        "--dry-run",
        action="store_true",
        help="map every row, print the first records and the counts, queue nothing",
    ),
    arg("--strict", action="store_true", help="exit 1 when any row was refused"),
    arg("--wait", action="store_true", help="after queueing, wait until every record is delivered"),
    arg("--json", action="store_true", help="print one JSON summary"),
)
def cmd_import(args: argparse.Namespace) -> int:
    if args.file == "status":
        return _status(args)
    if args.file == "cancel":
        return _cancel(args)
    if args.import_id is not None:
        raise InputError(f"import takes one file; {args.import_id!r} is one too many (status, cancel: an id)")
    ctx = context(args)
    config = ctx.integration
    is_csv = args.csv or args.file.lower().endswith(".csv")
    fmt = "records" if args.records else "csv" if is_csv else "events"
    spec = None
    shape: dict[str, Any] = {"format": fmt}
    if fmt == "csv":
        if args.type is None:
            raise InputError("a CSV import needs --type event or --type profile")
        if args.type == "profile" and args.event:
            raise InputError("--event names an event: not with --type profile")
        columns = load_columns(_read(args.columns, "--columns"), args.columns) if args.columns else {}
        schema = load_schema(_read(args.schema, "--schema"), args.schema) if args.schema else {}
        spec = CsvSpec(args.type, args.event, columns, schema, config.max_event_properties)
        shape.update(type=args.type, event=args.event, columns=columns, schema=schema)
    elif args.type or args.event or args.columns or args.schema:
        raise InputError("--type, --event, --columns and --schema are for CSV files")
    stream = open_input(args.file)
    try:
        if args.dry_run:
            return _dry_run(ctx, config, stream, fmt, spec, args)
        return _run(ctx, config, stream, fmt, spec, shape, args)
    finally:
        if args.file != "-":
            stream.close()


def _dry_run(ctx: Any, config: Any, stream: Any, fmt: str, spec: Any, args: argparse.Namespace) -> int:
    source = Source(stream, fmt, config, ctx.store, spec)
    now = int(time.time())

    def mapped() -> Any:
        for line, item in source.items():
            m = source.map([(line, item)], {}, config.name, "dry-run")
            yield line, (orjson.loads(m.records[0]) if m.records else None), m.errors

    summary = summarise(mapped(), now)
    for e in summary.errors[:PRINTED]:
        err(str(e))
    if args.json:
        print(orjson.dumps({**summary.as_dict(), "first": summary.first}).decode())
    else:
        for record in summary.first:
            print(orjson.dumps(record).decode())
        print(f"{summary.rows:,} rows: {summary.records:,} records, {summary.refused:,} refused; none queued")
        _old_warning(summary.older_than_a_year)
    return EXIT_FAILED if args.strict and summary.refused else EXIT_OK


def _old_warning(old: int) -> None:
    if old:
        err(f"warning: {old:,} records are older than {A_YEAR_S // 86400} days: CleverTap stores them, but "
            "its dashboard shows the last year only")  # fmt: skip


def _run(
    ctx: Any, config: Any, stream: Any, fmt: str, spec: Any, shape: dict[str, Any], args: argparse.Namespace
) -> int:
    from tqdm import tqdm

    store, settings = ctx.store, ctx.settings
    iid, state, start = begin(store, config, args.file, shape)
    if state in (DONE, "read"):
        err(f"import {iid}: {args.file} was queued already ({state}); `import status {iid}` shows it")
        return _finish(store, config.name, iid, Progress(rows=start, skipped=start), args)
    if start:
        err(f"import {iid}: resuming after row {start:,} (queued already)")
    from_file = args.file != "-"
    size = os.fstat(stream.fileno()).st_size if from_file else None
    bar = tqdm(desc=f"import {iid[:8]}", total=size, unit="B" if from_file else " rows", unit_scale=from_file,
               file=sys.stderr, disable=None, dynamic_ncols=True)  # fmt: skip
    printed = [0]
    started = time.monotonic()

    def on_chunk(p: Progress) -> None:
        for e in p.errors:
            if printed[0] < PRINTED:
                bar.write(str(e), file=sys.stderr)
            printed[0] += 1
        p.errors.clear()  # reported; memory stays flat on big files
        bar.update((p.bytes_read - bar.n) if from_file else (p.rows - p.skipped - bar.n))
        rate = (p.rows - p.skipped) / max(1e-6, time.monotonic() - started)
        line = f"{p.rows:,} rows, {rate:,.0f} rows/s, {p.queued:,} queued, {p.refused:,} refused"
        bar.set_postfix_str(line, refresh=False)

    importer = Importer(store, config, iid, settings.import_window)
    source = Source(stream, fmt, config, store, spec)
    try:
        with bar:
            progress = importer.run(source, start, on_chunk, stream.tell if from_file else None)
    except KeyboardInterrupt:
        err(f"import {iid}: interrupted; every row up to the last checkpoint is queued once. Run the same "
            "command again to resume.")  # fmt: skip
        return 130
    except ImportFailed as exc:
        err(str(exc))
        return EXIT_FAILED
    if printed[0] > PRINTED:
        err(f"... and {printed[0] - PRINTED:,} more bad rows (all kept as dead letters)")
    return _finish(store, config.name, iid, progress, args)


def _finish(store: Any, name: str, iid: str, progress: Progress, args: argparse.Namespace) -> int:
    info = store.import_info(name, iid)
    if args.wait:
        while info is not None and info.state in ACTIVE:
            time.sleep(POLL_S)
            info = store.import_info(name, iid)
    summary = info.as_dict() if info else {"id": iid}
    summary["this_run"] = {"rows": progress.rows - progress.skipped, "queued": progress.queued,
                           "refused": progress.refused, "filtered": progress.filtered,
                           "waited_for_window_s": round(progress.waited_s, 1)}  # fmt: skip
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        d = summary
        print(
            f"import {iid} [{name}]: {d.get('rows', 0):,} rows read, {d.get('queued', 0):,} queued, "
            f"{d.get('refused', 0):,} refused, {d.get('delivered', 0):,} delivered so far ({d.get('state')})"
        )
        if info is not None and info.state in ACTIVE:
            print(f"workers deliver the rest as live traffic leaves room: `import status {iid}`")
    _old_warning(progress.old)
    if progress.tokens:
        err(
            f"note: {progress.tokens:,} push tokens (context.device.token) were left out: an import sends "
            "events and profiles; tokens come with live traffic"
        )
    refused = info.number("refused") if info else progress.refused
    if args.wait and (info is None or info.state == CANCELLED):
        err(f"import {iid} was cancelled before it was delivered")
        return EXIT_FAILED
    return EXIT_FAILED if args.strict and refused else EXIT_OK


def _status(args: argparse.Namespace) -> int:
    ctx = context(args)
    found: list[ImportInfo] = []
    for name in ctx.names:  # every integration unless --integration names one
        wanted = args.import_id or ""
        found.extend(i for i in ctx.store.imports(name) if i.id.startswith(wanted))
    if args.import_id and not found:
        err(f"no import {args.import_id!r}")
        return EXIT_FAILED
    rows = [_with_rate(i) for i in found]
    if args.json:
        print(orjson.dumps(rows).decode())
        return EXIT_OK
    if not rows:
        print("no imports")
    for d in rows:
        eta = f", ETA {d['eta_s']:,.0f} s" if d.get("eta_s") is not None else ""
        print(
            f"{d['id']} [{d['integration']}] {d['state']}: {d['file']}: {d['rows']:,} rows read, "
            f"{d['queued']:,} queued, {d['delivered']:,} delivered, {d['dead']:,} dead-lettered, "
            f"{d['refused']:,} refused, {d['in_redis']:,} in Redis, {d['rate']:,.0f} records/s{eta}"
        )
    return EXIT_OK


def _with_rate(info: ImportInfo) -> dict[str, Any]:
    """An import's fields with its delivery rate and, while it runs, an estimated time left."""
    d = info.as_dict()
    end = d["finished"] or int(time.time() * 1000)
    elapsed = max(1e-3, (end - d["started"]) / 1000) if d["started"] else 0
    settled = d["delivered"] + d["dead"]
    d["rate"] = settled / elapsed if elapsed else 0.0
    d["eta_s"] = None
    if info.state in ACTIVE and d["rate"] > 0:
        total = d["queued"]
        size, read = info.number("size"), info.number("bytes")
        if info.state == "running" and size and read:
            total = int(d["queued"] * size / read)  # the rows still unread, at the rate so far
        d["eta_s"] = max(0.0, (total - settled) / d["rate"])
    return d


def _cancel(args: argparse.Namespace) -> int:
    if not args.import_id:
        raise InputError("import cancel takes an import's id (`import status` lists them)")
    ctx = context(args)
    matches = [
        (name, info)
        for name in ctx.names
        for info in ctx.store.imports(name)
        if info.id == args.import_id or (len(args.import_id) >= 6 and info.id.startswith(args.import_id))
    ]
    if not matches:
        err(f"no import {args.import_id!r}")
        return EXIT_FAILED
    if len(matches) > 1:
        err(f"{args.import_id!r} names {len(matches)} imports: give more of the id")
        return EXIT_FAILED
    name, info = matches[0]
    res = ctx.store.cancel_import(name, info.id) if info.state not in (CANCELLED, DONE) else None
    if res is None:
        err(f"import {info.id} has ended ({info.state}): nothing to cancel")
        return EXIT_FAILED
    removed, batches, sending = res
    print(f"import {info.id} cancelled: {removed:,} records removed ({batches} batches); {sending} batches "
          "being sent finish")  # fmt: skip
    return EXIT_OK
