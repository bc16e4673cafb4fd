"""The collector over HTTP: a small Starlette app served by uvicorn (``clevertap-pipeline collect``).

Starlette and uvicorn were chosen by measurement (README, dependency notes). The app reads a body only up
to the path's limit, hands it to :class:`~pipeline.collector.core.Collector` on the event loop
(measured: cheaper than a worker thread per request), and answers with what that returns. Nothing here
logs a header or a body: the write key and the events stay out of the logs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.collector.core import Answer, Collector, error_answer, limit_for
from pipeline.config import Settings, load_settings
from pipeline.saved import LiveSettings
from pipeline.store import Store

#: Seconds a request's body may take to arrive.
BODY_TIMEOUT_S = 30
#: Connections one worker process serves at once; past it uvicorn answers 503 (and the SDK retries).
MAX_CONNECTIONS = 200

#: On every answer: the body is JSON for SDKs, never a page to render or cache.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def _respond(answer: Answer) -> Response:
    return Response(
        answer.encoded(),
        status_code=answer.status,
        headers={**SECURITY_HEADERS, **answer.headers},
        media_type="application/json",
    )


def create_app(settings: Settings | None = None, store: Store | None = None) -> Starlette:
    """The collector app for ``settings`` (default: the environment and the TOML file)."""
    live = None
    if settings is None:
        base = load_settings()
        # Bounded waits: a Redis that hangs must become a 503 the SDK retries, not a request held for ever.
        client = redis.Redis.from_url(
            base.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        store = Store(client, base.key_prefix)
        live = LiveSettings(lambda: base, store)  # integrations saved in the console, within 5 s
        settings = live.current()
    if store is None:
        store = Store.shared(settings.redis_url, settings.key_prefix)
    state = {"settings": settings, "collector": Collector(settings, store)}

    def current() -> Collector:
        if live is not None:
            now = live.current()
            if now is not state["settings"]:
                state["settings"], state["collector"] = now, Collector(now, store)
        collector: Collector = state["collector"]  # type: ignore[assignment]
        return collector

    async def calls(request: Request) -> Response:
        path = request.url.path
        limit = limit_for(path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        collector = current()
        refused = collector.refuses_header(headers)  # a wrong key in the header: no body is read
        if refused is not None:
            return _respond(refused)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _respond(error_answer(400, "too_large", f"the body may be at most {limit // 1024} KB"))
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a client that stalls mid-body is let go
                async for part in request.stream():
                    body += part
                    if len(body) > limit:  # stop reading: the rest is never buffered
                        return _respond(
                            error_answer(400, "too_large", f"the body may be at most {limit // 1024} KB")
                        )
        except TimeoutError:
            message = f"the body did not arrive within {BODY_TIMEOUT_S} s"
            return _respond(error_answer(408, "timeout", message, Connection="close"))
        # On the event loop, not in a thread: handling is CPU work plus one Redis round trip per 500 events,
        # and the hop to a thread cost 40% more CPU per event (bench-collect). Reading bodies stays async,
        # so a slow client holds no one up; a process handles one batch at a time (--workers for cores).
        answer = collector.handle(path, headers, bytes(body))
        return _respond(answer)

    async def health(_: Request) -> Response:
        ok = current().healthy()
        return _respond(Answer(200, {"ok": True}) if ok else Answer(503, {"ok": False}))

    app = Starlette(
        routes=[
            Route("/v1/{call}", calls, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    return app


def app_factory() -> Any:
    """For ``uvicorn --factory``: each worker process builds its app from the environment."""
    return create_app()
