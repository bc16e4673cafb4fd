"""Verbs that take events in: ``check-config``, ``ingest`` and ``preview``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson
import redis

from pipeline.cli.registry import (
    EXIT_FAILED,
    EXIT_OK,
    INPUT,
    arg,
    context,
    err,
    integration_arg,
    open_input,
    verb,
)


@verb("check-config", "Validate the configuration and print it with the passcode masked (exit 2 on errors).")
def check_config(args: argparse.Namespace) -> int:
    print(orjson.dumps(context(args).settings.public_dict(), option=orjson.OPT_INDENT_2).decode())
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

    from pipeline.ingest import CHUNK, Ingestor, IngestResult, chunked, read_events

    ctx = context(args)
    ingestor = Ingestor(ctx.store, ctx.integration)
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
            + (
                f"; {total.held} anonymous events held until the visitor is known (anonymous = hold)"
                if total.held
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
    from pipeline.ingest import Ingestor, read_events

    ctx = context(args)
    ingestor = Ingestor(ctx.store, ctx.integration)
    check_store = True
    try:
        ctx.store.r.ping()
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
