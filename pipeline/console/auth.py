"""Logging in and out. One password (``CLEVERTAP_CONSOLE_PASSWORD``); a session is a signed cookie whose id
also lives in Redis, so logging out ends it for good, even for a copied cookie."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.console.web import SESSION_S, console_of, form, render


async def login(request: Request) -> Response:
    if request.method == "GET":
        return render(request, "login.html")
    console = console_of(request)
    data = await form(request)
    given = hashlib.sha256(str(data.get("password", "")).encode()).digest()
    if not hmac.compare_digest(given, console.password_digest):
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
