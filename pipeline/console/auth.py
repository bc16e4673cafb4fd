"""Logging in and out. One password (``CLEVERTAP_CONSOLE_PASSWORD``); a session is a signed cookie whose id
also lives in Redis, so logging out ends it for good, even for a copied cookie."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.console.web import SESSION_S, console_of, form, render

#: Failed logins allowed in FAILURE_WINDOW_S from one client address; past it, its logins are refused (429)
#: until the window moves on. Past FAILURES_OVERALL from all addresses together (a guesser spread over
#: many), every attempt waits OVERALL_DELAY_S first: slowed, not refused, so that nobody can lock the
#: administrator out by guessing.
FAILURES_PER_CLIENT = 5
FAILURES_OVERALL = 30
FAILURE_WINDOW_S = 60.0
OVERALL_DELAY_S = 3.0
#: Client addresses remembered at most (the oldest go first).
MAX_TRACKED = 10_000

log = logging.getLogger("pipeline.console")


class LoginFailures:
    """Recent failed logins, per client address and in all, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.by_client: OrderedDict[str, deque[float]] = OrderedDict()
        self.overall: deque[float] = deque()

    def _recent(self, times: deque[float]) -> int:
        floor = self.clock() - FAILURE_WINDOW_S
        while times and times[0] < floor:
            times.popleft()
        return len(times)

    def blocked_for(self, client: str) -> float:
        """0 when ``client`` may try; else the seconds until it may."""
        mine = self.by_client.get(client, deque())
        if self._recent(mine) >= FAILURES_PER_CLIENT:
            return mine[0] + FAILURE_WINDOW_S - self.clock()
        return 0.0

    def under_attack(self) -> bool:
        """Many failures from everywhere together: every attempt is slowed."""
        return self._recent(self.overall) >= FAILURES_OVERALL

    def failed(self, client: str) -> int:
        """Count a failure; returns the client's failures in the window."""
        now = self.clock()
        mine = self.by_client.pop(client, deque())
        mine.append(now)
        self.by_client[client] = mine
        self.overall.append(now)
        while len(self.by_client) > MAX_TRACKED:
            self.by_client.popitem(last=False)
        return self._recent(mine)


async def login(request: Request) -> Response:
    if request.method == "GET":
        return render(request, "login.html")
    console = console_of(request)
    client = request.client.host if request.client else "unknown"
    wait = console.login_failures.blocked_for(client)
    if wait > 0:
        log.warning("console: login from %s refused: too many failed logins (wait %.0f s)", client, wait)
        page = render(request, "login.html", status=429, error="too many failed logins: wait a minute")
        page.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return page
    if console.login_failures.under_attack():
        await asyncio.sleep(OVERALL_DELAY_S)
    data = await form(request)
    given = hashlib.sha256(str(data.get("password", "")).encode()).digest()
    if not hmac.compare_digest(given, console.password_digest):
        n = console.login_failures.failed(client)
        log.warning("console: failed login from %s (%d in the last minute)", client, n)
        await asyncio.sleep(0.5)  # a guess costs time (without holding up anyone else)
        return render(request, "login.html", status=401, error="wrong password")
    request.session.clear()  # a new session on login: nothing from before carries over
    sid = secrets.token_urlsafe(24)
    console.store.r.set(console.session_key(sid), "1", ex=SESSION_S)
    request.session.update(
        user="admin", sid=sid, until=time.time() + SESSION_S, csrf=secrets.token_urlsafe(24)
    )
    return RedirectResponse("/integrations", status_code=303)


async def logout(request: Request) -> Response:
    await form(request)
    sid = request.session.get("sid")
    if sid:
        console = console_of(request)
        console.store.r.delete(console.session_key(str(sid)))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def home(request: Request) -> Response:
    return RedirectResponse("/integrations", status_code=303)


def session_secret(password: str, key: str | None) -> str:
    """The cookie-signing secret: derived from the console key and password (so a new password ends every
    session), never shown."""
    material = f"{key or ''}\x00{password}".encode()
    return hashlib.sha256(b"clevertap-console-session\x00" + material).hexdigest()
