"""The yardstick for bench-collect's browser shape: a bare Starlette endpoint that answers 200 to every
``POST /v1/<call>``, served the way the collector is (pipeline.cli.serving.serve): what the HTTP stack
alone costs, so the collector's figure says what its own work adds. Its garbage collector is tuned as
the collector's is (serving_gc), so that the two differ only in the work.

``plain`` is the same endpoint as a bare ASGI function: the collector serves ``POST /v1/<call>`` so, past
Starlette, and this is what uvicorn alone costs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.collector.app import serving_gc


async def ok(request: Request) -> Response:
    await request.body()
    return Response(b'{"success":true}', media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    serving_gc()
    yield


app = Starlette(lifespan=lifespan, routes=[Route("/v1/{call}", ok, methods=["POST"])])


_OK = b'{"success":true}'
_OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_OK))]


async def plain(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """200 to every request, its body read whole; the lifespan tunes the garbage collector."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                serving_gc()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
    await send({"type": "http.response.body", "body": _OK})
