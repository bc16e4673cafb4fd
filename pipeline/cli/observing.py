"""Verbs that look at the pipeline: ``status``, ``debugger`` and ``metrics``."""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from pipeline.cli.registry import EXIT_OK, arg, context, integration_arg, verb
from pipeline.errors import InputError


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
    import sys

    from pipeline.status import DeliveryRate, forget_status, integration_status, unserved_elsewhere

    if args.interval <= 0:
        raise InputError(f"--interval must be above 0, got {args.interval}")
    ctx = context(args)
    rate = DeliveryRate()
    refreshes = 0
    tty = sys.stdout.isatty()
    while True:
        found = {name: integration_status(ctx.settings, ctx.store, name) for name in ctx.names}
        elsewhere = {} if args.integration else unserved_elsewhere(ctx.settings, ctx.store)
        if args.watch:
            rate.update(found)
        forgets = forget_status(ctx.store)
        if args.json:
            shown = {"integrations": found, "unserved": elsewhere, "forget": forgets}
            print(orjson.dumps(shown).decode(), flush=True)
        else:
            text = "\n".join(
                [
                    *(_status_text(name, s) for name, s in found.items()),
                    *(_unserved_text(name, u, ctx.settings.unknown_hint()) for name, u in elsewhere.items()),
                    *(_forget_text(forgets) if forgets["requests"] else []),
                ]
            )
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


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _unserved_text(name: str, u: dict[str, Any], hint: str) -> str:
    return (
        f"integration {name}: {u['pending']:,} records queued, and an assembler that does not serve it found "
        f"them at {_iso(u['last_found'])} (a worker or beat without the console's key?): {hint}"
    )


def _forget_text(forgets: dict[str, Any]) -> list[str]:
    states = ", ".join(f"{state} {n:,}" for state, n in sorted(forgets["requests"].items()))
    line = f"forget requests: {states}"
    if forgets["requests"].get("failed"):
        line += " (failed ones: clevertap-pipeline forget status, then forget retry ID)"
    return [line]


def _status_text(name: str, s: dict[str, Any]) -> str:
    q, c = s["queues"], s["counters"]
    age = s["oldest_pending_age_s"]
    lines = [
        f"integration {name} (account {s['account_id']}"
        + (f", on cluster node {s['node']}" if s.get("node") else "")
        + ")"
        + (f": oldest record waiting {age:.1f} s" if age is not None else "")
    ]
    if "delivered_per_s" in s:
        rate = s["delivered_per_s"]
        lines.append("  delivering " + ("... (measuring)" if rate is None else f"{rate:,.1f} records/s"))
    lines.append(
        f"  queued {q['pending']:,} records (+{s['queued_in_batches']:,} in batches); "
        f"{q['open_batches']} open and {q['held_batches']} held batches; "
        f"in flight {s['in_flight']} (peak {s['peak_in_flight']}, limit {s['effective_limit']}"
        + (
            f" of {s['limit']}: lowered, another client uses the account)"
            if s["effective_limit"] < s["limit"]
            else ")"
        )
    )
    lines.append(
        f"  ingested: accepted {c.get('accepted', 0):,}, filtered {c.get('filtered', 0):,}, "
        f"duplicate {c.get('duplicate', 0):,}, rejected at mapping {c.get('rejected_mapping', 0):,}"
        + (f"; forgotten users' events filtered {c['forgotten']:,}" if c.get("forgotten") else "")
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
    if s["not_served_since"] is not None:
        lines.append(
            f"  NOT SERVED BY SOME WORKER: an assembler that does not know it found its records at "
            f"{_iso(s['not_served_since'])}: give every worker and beat the same CLEVERTAP_CONSOLE_KEY as "
            "the console"
        )
    if s["auth"] != "ok":
        since = s["auth"].get("since")
        when = _iso(int(since) / 1000) if since and since.isdigit() else since
        lines.append(f"  AUTHENTICATION FAILING since {when}: {s['auth'].get('reason')}")
    if s["last_error"]:
        e = s["last_error"]
        lines.append(
            f"  last error {_iso(float(e['time']))}, batch {e['batch']}: {e['reason'][:200]}"
            + (" (resolved: batches were delivered after it)" if e.get("resolved") else "")
        )
    for key, d in sorted(s["dead_letters"].items()):
        lines.append(
            f"  dead letters {key}: {d['count']:,}" + (f", e.g. {d['example'][:160]}" if d["example"] else "")
        )
    return "\n".join(lines)


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
    from pipeline import debugger as attempts

    ctx = context(args)
    if args.what:
        if len(args.what) != 2 or args.what[0] != "show":
            raise InputError("usage: debugger show BATCH")
        found = attempts.of_batch(ctx.store, ctx.names, args.what[1])
        if not found:
            raise InputError(f"no attempt of batch {args.what[1]} is kept (the debugger keeps the last ones)")
        for entry in found:
            print(orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    for e in attempts.recent(ctx.store, ctx.names, args.failed, args.limit):
        if args.json:
            print(orjson.dumps(e).decode())
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(e["time"])))
        shown = e["http_status"] if e["http_status"] is not None else (e.get("error") or "-")
        print(
            f"{when}  {e['integration']:<12} {e['batch_id']}  {e['records']:>5} records  attempt "
            f"{e['attempt']:<3} HTTP {shown}  {e['latency_s']:.2f} s  {e['result']}"
        )
    return EXIT_OK


@verb(
    "metrics",
    "Serve Prometheus metrics at /metrics, read from Redis at each scrape (every worker on every host "
    "counted once). Loopback only unless --host says otherwise. Names and labels: docs/metrics.md.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=int, default=9464, help="port; 0 picks a free one (printed)"),
)
def metrics(args: argparse.Namespace) -> int:
    import signal
    import threading

    from prometheus_client import make_wsgi_app
    from prometheus_client.registry import CollectorRegistry

    from pipeline.cli.http import bounded_wsgi_server
    from pipeline.metrics import RedisCollector

    ctx = context(args)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(ctx.settings, ctx.store))
    server = bounded_wsgi_server(args.host, args.port, make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
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
