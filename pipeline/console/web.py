"""What every console page shares: the app's state, the guard around every request, rendering, the CSRF
check, the login check and the error page."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.config import IntegrationConfig, Settings
from pipeline.saved import LiveSettings, SavedIntegrations
from pipeline.store import Store

#: Largest request body the console reads (the preview's pasted events are the big one).
MAX_BODY = 512 * 1024
#: Requests the console handles at once (it is a page for a few people, not a public endpoint).
MAX_REQUESTS = 100
#: A login lasts this long (and its session key in Redis as long).
SESSION_S = 8 * 3600
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]  # fmt: skip

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Console:
    """The console's state, one per app (``request.app.state.console``)."""

    live: LiveSettings
    templates: Jinja2Templates
    password_digest: bytes = field(repr=False)
    login_failures: Any = field(default=None, repr=False)  # auth.LoginFailures, made by the app

    @property
    def store(self) -> Store:
        return self.live.store

    @property
    def saved(self) -> SavedIntegrations:
        return self.live.saved

    def settings(self) -> Settings:
        return self.live.current()

    def session_key(self, sid: str) -> str:
        return self.store.console_key(f"session:{hashlib.sha256(sid.encode()).hexdigest()}")


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


class Guard:
    """Security headers on every answer, a bound on every request body, and on the requests in flight (a
    503 past MAX_REQUESTS; open connections are capped apart, by the HTTP protocol)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= MAX_REQUESTS:
            await _plain(send, 503, b"busy: try again")
            return
        self.in_flight += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_BODY:
            await _plain(send, 413, b"request too large")
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise HTTPException(413, "request too large")
            return message

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, bounded, with_headers)


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})


def format_time(epoch: float | None) -> str:
    """The templates' ``when`` filter: an epoch time as ``YYYY-MM-DD HH:MM:SS UTC``."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    page: Response = console_of(request).templates.TemplateResponse(
        request,
        template,
        {"csrf": csrf(request), "user": request.session.get("user"), "path": request.url.path, **context},
        status_code=status,
    )
    return page


async def form(request: Request) -> FormData:
    """The posted form, once its CSRF token is checked (403 otherwise)."""
    data = await request.form(max_files=0, max_fields=500, max_part_size=MAX_BODY)
    given = str(data.get("csrf", ""))
    if not given or not hmac.compare_digest(given, str(request.session.get("csrf", ""))):
        raise HTTPException(403, "the form is stale or not ours (CSRF check failed): reload the page")
    return data


def login_required(handler: Handler) -> Handler:
    """Send a request without a live session (signed cookie, not expired, still in Redis) to the login."""

    async def guarded(request: Request) -> Response:
        sid = request.session.get("sid")
        if (
            not request.session.get("user")
            or time.time() > request.session.get("until", 0)
            or not sid
            or not console_of(request).store.r.exists(console_of(request).session_key(str(sid)))
        ):
            request.session.clear()
            return RedirectResponse("/login", status_code=303)
        return await handler(request)

    return guarded


def integration_or_404(request: Request, name: str) -> IntegrationConfig:
    config = console_of(request).settings().integrations.get(name)
    if config is None:
        raise HTTPException(404, f"no integration {name[:64]!r}")
    return config


async def error_page(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    page: Response = console_of(request).templates.TemplateResponse(
        request, "error.html", {"status": status, "detail": detail, "user": None, "path": "", "csrf": ""},
        status_code=status,
    )  # fmt: skip
    return page
