"""The yardstick for bench-collect's browser shape: a bare Starlette endpoint that answers 200 to every
``POST /v1/<call>``, served the way the collector is (pipeline.cli.serving.serve): what the HTTP stack
alone costs, so the collector's figure says what its own work adds."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def ok(request: Request) -> Response:
    await request.body()
    return Response(b'{"success":true}', media_type="application/json")


app = Starlette(routes=[Route("/v1/{call}", ok, methods=["POST"])])
