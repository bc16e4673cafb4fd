"""The ``dead-letters`` verbs: list, show, count, export, replay, drop and purge, each on a
:class:`~pipeline.deadletters.Filter` built from the same arguments."""

from __future__ import annotations

import argparse
import itertools
import sys

import orjson

from pipeline.cli.registry import EXIT_FAILED, EXIT_OK, arg, context, err, integration_arg, verb, verb_group
from pipeline.deadletters import STAGES, Filter, count, drop, iter_dead_letters, parse_time
from pipeline.errors import InputError

verb_group(
    "dead-letters",
    "List, replay or drop dead letters: events that could not be mapped (stage mapping) and rows "
    "CleverTap refused or that gave up (stage api).",
)


def _time(text: str) -> float:
    """An argparse type: a time, as :func:`pipeline.deadletters.parse_time` reads it."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


FILTERS = (
    integration_arg(),
    arg("--stage", choices=STAGES, default=None, help="only this stage"),
    arg("--code", type=int, default=None, help="only this CleverTap code (api stage)"),
    arg(
        "--since",
        type=_time,
        default=None,
        help="only dead letters from this time on (epoch s, or ISO 8601: UTC unless it has a zone)",
    ),
    arg("--until", type=_time, default=None, help="only dead letters up to this time"),
)
SELECTION = (
    arg("--id", action="append", default=[], help="a dead letter id (repeatable)"),
    arg("--all", action="store_true", help="every dead letter matching --stage/--code"),
)


def _selection(args: argparse.Namespace) -> list[str] | None:
    if bool(args.id) == bool(args.all):
        raise InputError("give --id ID (repeatable) or --all (optionally with --stage/--code)")
    return list(args.id) if args.id else None


def _dump(value: object) -> None:
    print(orjson.dumps(value).decode())


@verb(
    "dead-letters list",
    "Print dead letters as JSON lines, oldest first.",
    *FILTERS,
    arg("--limit", type=int, default=100, help="at most this many"),
)
def dead_letters_list(args: argparse.Namespace) -> int:
    shown = 0
    for entry in itertools.islice(iter_dead_letters(context(args).store, Filter.from_args(args)), args.limit):
        _dump(entry)
        shown += 1
    if not shown and sys.stderr.isatty():  # a person at a terminal sees that none matched; a pipe, nothing
        err(f"no dead letters{_matching(args)} in integration {args.integration!r}")
    return EXIT_OK


def _matching(args: argparse.Namespace) -> str:
    said = [f"{k} {getattr(args, k)}" for k in ("stage", "code") if getattr(args, k) is not None]
    return f" matching {', '.join(said)}" if said else ""


@verb("dead-letters show", "Print one dead letter in full.", integration_arg(), arg("id", help="its id"))
def dead_letters_show(args: argparse.Namespace) -> int:
    (raw,) = context(args).store.dead_letters(args.integration, [args.id])
    if raw is None:
        raise InputError(f"no dead letter {args.id} in integration {args.integration!r}")
    print(orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


@verb("dead-letters count", "Count dead letters by stage and code (with --stage/--code/--since/--until).",
      *FILTERS)  # fmt: skip
def dead_letters_count(args: argparse.Namespace) -> int:
    counts = count(context(args).store, Filter.from_args(args))
    _dump({"total": sum(counts.values()), "by_stage_and_code": counts})
    return EXIT_OK


@verb(
    "dead-letters export",
    "Write dead letters as JSON lines, oldest first, streaming (flat in memory however many).",
    *FILTERS,
    arg("--output", "-o", default="-", help="a file, or - for standard output"),
)
def dead_letters_export(args: argparse.Namespace) -> int:
    ctx = context(args)
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    written = 0
    try:
        for entry in iter_dead_letters(ctx.store, Filter.from_args(args)):
            out.write(orjson.dumps(entry) + b"\n")
            written += 1
    finally:
        if args.output != "-":
            out.close()
    err(f"exported {written} dead letters")
    return EXIT_OK


def _renames(pairs: list[str]) -> dict[str, str]:
    renames = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise InputError(f"--rename-event must be OLD=NEW, got {pair!r}")
        renames[old] = new
    return renames


@verb(
    "dead-letters replay",
    "Queue dead letters again: api rows as they are, mapping events through the current mappings "
    "(fix the configuration first). Each one moves atomically.",
    *FILTERS,
    *SELECTION,
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
    from pipeline.replay import plan, replay

    ctx = context(args)
    ids = _selection(args)
    renames = _renames(args.rename_event)
    where = Filter.from_args(args)
    if args.dry_run:
        planned = plan(ctx.store, where, ids)
        _dump(planned.as_dict())
        return EXIT_FAILED if planned.missing else EXIT_OK
    res = replay(ctx.store, ctx.integration, ids=ids, where=where, rename_events=renames)
    _dump(res.as_dict())
    return EXIT_FAILED if res.missing else EXIT_OK


@verb("dead-letters drop", "Delete dead letters for good.", *FILTERS, *SELECTION)
def dead_letters_drop(args: argparse.Namespace) -> int:
    _dump({"dropped": drop(context(args).store, Filter.from_args(args), _selection(args))})
    return EXIT_OK


@verb(
    "dead-letters purge",
    "Delete every dead letter matching the filters (all of them without any), after asking; --yes to skip "
    "the question (scripts).",
    *FILTERS,
    arg("--yes", action="store_true", help="do not ask"),
)
def dead_letters_purge(args: argparse.Namespace) -> int:
    ctx = context(args)
    where = Filter.from_args(args)
    if not args.yes:
        n = sum(count(ctx.store, where).values())
        if not sys.stdin.isatty():
            raise InputError(f"would purge {n} dead letters: add --yes (standard input is not a terminal)")
        answer = input(f"purge {n} dead letters of {args.integration!r} for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            err("nothing purged")
            return EXIT_FAILED
    _dump({"purged": drop(ctx.store, where)})
    return EXIT_OK
