"""The ``forget`` verb: forget a user (no copy left in the pipeline, then CleverTap's delete), and the
status of the requests (``forget status [ID]``, ``forget retry ID``)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from pipeline.cli.registry import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, arg, context, err, verb
from pipeline.errors import InputError
from pipeline.forget import Forgetter, State, Who, describe, values_from_lines

_ENDED = (State.DONE, State.FAILED, State.HELD)
#: How often a waiting ``forget`` looks at its request.
POLL_S = 0.25


@verb(
    "forget",
    "Forget a user: remove every copy the pipeline holds of them (queued records, batches, dead letters, "
    "the identity map, the debugger), filter their later events, and ask CleverTap to delete the profile. "
    "Prints the request's id and exits once the pipeline holds no copy; `forget status [ID]` shows requests.",
    arg("action", nargs="?", choices=("status", "retry"), default=None, help="status [ID], or retry ID"),
    arg("request_id", nargs="?", default=None, help="a request's id (with status or retry)"),
    arg(
        "--integration",
        "-i",
        action="append",
        default=[],
        help="only this integration (repeatable; default: every one)",
    ),
    arg("--identity", action="append", default=None, help="an email or CleverTap identity (repeatable)"),
    arg("--user-id", action="append", default=None, help="a userId (repeatable)"),
    arg("--object-id", action="append", default=None, help="a CleverTap objectId, its guid (repeatable)"),
    arg(
        "--anonymous-id",
        action="append",
        default=[],
        help="an anonymousId (repeatable; not sent to CleverTap, which does not know it)",
    ),
    arg(
        "--file",
        default=None,
        help="values one per line, each as KIND:VALUE (identity:, user_id:, "
        "object_id:, anonymous_id:) or a bare email/identity; # starts a comment",
    ),
    arg("--wait", action="store_true", help="also wait for CleverTap's answer (a worker sends it)"),
    arg("--timeout", type=float, default=600.0, help="seconds --wait waits at most"),
    arg("--json", action="store_true", help="print JSON"),
)
def cmd_forget(args: argparse.Namespace) -> int:
    ctx = context(argparse.Namespace())
    forgetter = Forgetter(ctx.settings, ctx.store)
    if args.action == "status":
        return _status(forgetter, args)
    if args.action == "retry":
        if not args.request_id:
            raise InputError("forget retry needs the request's id")
        forgetter.retry(args.request_id)
        print(f"forget request {args.request_id}: sent to CleverTap again by the next worker sweep")
        return EXIT_OK
    if args.request_id:
        raise InputError(f"unexpected {args.request_id!r}: did you mean forget status {args.request_id}?")
    who = Who(*(tuple(getattr(args, k) or ()) for k in ("identity", "user_id", "object_id", "anonymous_id")))
    if args.file:
        who = who | read_values(args.file)
    rid = forgetter.ask(who, args.integration or None)
    print(rid, flush=True)
    state = forgetter.run(rid, delete=False)  # purge here and now (a worker that took it first: wait)
    deadline = time.monotonic() + args.timeout
    want = (
        (State.DONE, State.FAILED, State.HELD)
        if args.wait
        else (State.DELETING, State.DONE, State.FAILED, State.HELD)
    )
    req = forgetter.store.request(rid) or {}
    while req.get("state") not in want and time.monotonic() < deadline:
        time.sleep(POLL_S)
        if req.get("state") == State.PURGING and state == "leased":
            state = forgetter.run(rid, delete=False)  # the worker that had it died: take it over
        req = forgetter.store.request(rid) or {}
    _print_request(rid, req, args.json)
    if req.get("state") not in want:
        err(
            f"forget {rid}: still {req.get('state')} after {args.timeout:g} s"
            + (" (is a worker running? CleverTap's delete is sent by one)" if args.wait else "")
        )
        return EXIT_UNAVAILABLE
    return EXIT_FAILED if req.get("state") in (State.FAILED, State.HELD) and args.wait else EXIT_OK


def _status(forgetter: Forgetter, args: argparse.Namespace) -> int:
    if args.request_id:
        req = forgetter.store.request(args.request_id)
        if req is None:
            raise InputError(f"no forget request {args.request_id!r}")
        _print_request(args.request_id, req, args.json)
        return EXIT_OK
    rows = [(rid, forgetter.store.request(rid)) for rid in forgetter.store.request_ids(100)]
    if args.json:
        print(orjson.dumps([{"id": rid, **describe(r)} for rid, r in rows if r]).decode())
        return EXIT_OK
    if not rows:
        print("no forget requests")
    for rid, req in rows:
        if req:
            print(_line(rid, req))
    return EXIT_OK


def _line(rid: str, req: dict[str, Any]) -> str:
    asked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(req.get("asked", 0)) / 1000))
    counts = req.get("counts") or {}
    removed = sum(int(v) for v in counts.values())
    text = f"{rid}  {req.get('state'):<9} asked {asked}, {removed:,} copies removed"
    if req.get("error"):
        text += f"; {req['error']}"
    return text


def _print_request(rid: str, req: dict[str, Any], as_json: bool) -> None:
    shown = {"id": rid, **describe(req)}
    if as_json:
        print(orjson.dumps(shown).decode())
        return
    print(_line(rid, req))
    places = ", ".join(f"{k} {v:,}" for k, v in sorted((req.get("counts") or {}).items()) if v)
    print(f"  removed: {places or 'nothing found'} (integrations: {', '.join(req.get('integrations', []))})")
    for account, progress in sorted((req.get("clevertap") or {}).items()):
        last = (progress.get("answers") or [{}])[-1]
        print(
            f"  CleverTap account {account}: {len(progress.get('confirmed', []))} delete requests confirmed"
            + (f"; last answer {last.get('status')}: {last.get('reason')}" if last else "")
        )


def read_values(path: str) -> Who:
    """A file of values, one per line (see :func:`pipeline.forget.values_from_lines`)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text: {exc.reason}") from None
    return values_from_lines(lines, path)
