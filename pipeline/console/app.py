"""The console's Starlette app: its routes, the session middleware, the error pages, and what it needs
from the environment to start."""

from __future__ import annotations

import hashlib
import os
from importlib import resources

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from pipeline.config import ENV_CONSOLE_KEY, ENV_CONSOLE_PASSWORD, load_settings
from pipeline.console import auth, dead_letters, debugger, forget, integrations
from pipeline.console.web import SESSION_S, Console, Guard, error_page, format_time
from pipeline.errors import InputError
from pipeline.saved import LiveSettings, fernet_from

#: The shortest console password accepted.
MIN_PASSWORD = 12
_HERE = resources.files("pipeline.console")


def create_console(
    password: str, session_secret: str, live: LiveSettings, https_only: bool = False
) -> ASGIApp:
    """The console app. ``live`` gives the current settings (with the console's integrations)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE.joinpath("templates"))),
        autoescape=True,  # every value a page shows is escaped: dead letters hold whatever arrived
    )
    templates = Jinja2Templates(env=env)
    templates.env.filters["when"] = format_time
    routes = [
        Route("/", auth.home),
        Route("/login", auth.login, methods=["GET", "POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Route("/integrations", integrations.integrations),
        Route("/integrations/new", integrations.integration_form, methods=["GET", "POST"]),
        Route("/integrations/{name}/edit", integrations.integration_form, methods=["GET", "POST"]),
        Route("/integrations/{name}/mappings", integrations.mappings, methods=["GET", "POST"]),
        Route("/integrations/{name}/delete", integrations.delete_integration, methods=["POST"]),
        Route("/debugger", debugger.debugger),
        Route("/debugger/{name}/{batch}", debugger.debugger_show),
        Route("/dead-letters", dead_letters.dead_letters),
        Route("/dead-letters/{name}/act", dead_letters.dead_letters_act, methods=["POST"]),
        Route("/dead-letters/{name}/{id}", dead_letters.dead_letter_show),
        Route("/forget", forget.forget_page),
        Route("/forget/ask", forget.forget_ask, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(_HERE.joinpath("static")))),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=session_secret,
                session_cookie="ctp_console",
                max_age=SESSION_S,
                same_site="strict",
                https_only=https_only,
            ),
        ],
        exception_handlers={HTTPException: error_page, Exception: error_page},
    )
    app.state.console = Console(
        live, templates, hashlib.sha256(password.encode()).digest(), auth.LoginFailures()
    )
    app.router.redirect_slashes = False  # a redirect would be built from the Host header
    return Guard(app)  # outermost: error pages (500s included) get the security headers too


def from_environment(host: str, https_only: bool = False) -> tuple[ASGIApp, LiveSettings]:
    """The console as ``clevertap-pipeline console`` serves it, from the environment: InputError says what
    is missing (the login password, the key that encrypts saved passcodes) before anything listens."""
    password = os.environ.get(ENV_CONSOLE_PASSWORD, "")
    if len(password) < MIN_PASSWORD:
        where = "" if host in ("127.0.0.1", "localhost", "::1") else f" (and it listens on {host})"
        raise InputError(
            f"set {ENV_CONSOLE_PASSWORD} to the console's password, {MIN_PASSWORD} characters or more"
            f"{where}: the console takes actions (saves integrations, replays and purges dead letters)"
        )
    if fernet_from() is None:
        raise InputError(
            f"set {ENV_CONSOLE_KEY} to a Fernet key (python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'): it encrypts the passcodes the console saves, and "
            "every worker needs the same key to send for those integrations"
        )
    live = LiveSettings(load_settings)
    secret = auth.session_secret(password, os.environ[ENV_CONSOLE_KEY])
    return create_console(password, secret, live, https_only=https_only), live
