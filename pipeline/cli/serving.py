"""Verbs that serve over HTTP: ``collect`` (the collector) and ``console`` (the management console), both
under uvicorn through :func:`serve`. The CLI is what starts a service; the services never import it."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.registry import EXIT_OK, arg, context, port, verb
from pipeline.errors import InputError
from pipeline.logs import uvicorn_log_config


def serve(app: Any, host: str, port_: int, log_format: str, **options: Any) -> None:
    """Serve an ASGI app (or ``"module:factory"`` with ``factory=True``) the way every service here is
    served: httptools on uvloop, guarded for the public (pipeline.cli.http: a header block must arrive
    within 5 s and stay under 32 KB, open connections are capped apart from requests in flight), no access
    log (a line per request says nothing the counters do not), no server header, idle connections closed
    after 5 s, logs as ``log_format`` says."""
    import uvicorn

    from pipeline.cli.http import GuardedHttpToolsProtocol

    settings: dict[str, Any] = {
        "http": GuardedHttpToolsProtocol,
        "loop": "uvloop",
        "access_log": False,
        "server_header": False,
        "timeout_keep_alive": 5,
        # never rewrite the client's address from X-Forwarded-For (uvicorn does for a loopback peer): the
        # collector believes it only from its trusted_proxies, and the console never
        "proxy_headers": False,
        "log_config": uvicorn_log_config(log_format),
        **options,
    }
    uvicorn.run(app, host=host, port=port_, **settings)


@verb(
    "collect",
    "Serve the Segment HTTP Tracking API (POST /v1/batch, /v1/track, /v1/identify, /v1/page, /v1/screen, "
    "/v1/alias, /v1/group; GET /health): SDKs pointed here queue their events as ingest does. The write key "
    "(CLEVERTAP_WRITE_KEY, or write_key / write_key_env per integration) authenticates and chooses the "
    "integration. Loopback only unless --host says otherwise.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=port, default=8088, help="port"),
    arg("--workers", type=int, default=1, help="worker processes (each a core's worth of requests)"),
)
def collect(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 64:
        raise InputError(f"--workers must be 1-64, got {args.workers}")
    settings = context(args).settings  # every error now, before a worker starts
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
    serve(
        "pipeline.collector.app:app_factory",  # each worker process builds its own app
        args.host,
        args.port,
        settings.log_format,
        factory=True,
        workers=args.workers,
        timeout_graceful_shutdown=20,  # requests in flight are capped by the app (MAX_REQUESTS bodies)
    )
    return EXIT_OK


@verb(
    "console",
    "The management console: integrations (add, edit), field mappings with a preview, the event debugger "
    "and the dead letters, in a browser. Needs CLEVERTAP_CONSOLE_PASSWORD (the login) and "
    "CLEVERTAP_CONSOLE_KEY (a Fernet key: it encrypts the passcodes saved in Redis; workers need it too). "
    "Loopback only unless --host says otherwise.",
    arg("--host", default="127.0.0.1", help="address to listen on"),
    arg("--port", type=port, default=8089, help="port"),
    arg("--https-only", action="store_true", help="session cookies only over HTTPS (behind TLS)"),
)
def console(args: argparse.Namespace) -> int:
    from pipeline.console import from_environment

    app, live = from_environment(args.host, https_only=args.https_only)
    print(f"console on http://{args.host}:{args.port}/", flush=True)
    serve(app, args.host, args.port, live.base.log_format)  # requests in flight: capped by its Guard
    return EXIT_OK
