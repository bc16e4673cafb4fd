"""The yardstick for bench-collect's browser shape: a bare Starlette endpoint that answers 200 to every
``POST /v1/<call>``, served the way the collector is (pipeline.cli.serving.serve): what the HTTP stack
alone costs, so the collector's figure says what its own work adds. Its garbage collector is tuned as
the collector's is (serving_gc), so that the two differ only in the work."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
