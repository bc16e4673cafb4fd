"""The management console (``clevertap-pipeline console``): the spec's Management UI as server-rendered pages.

Integrations (add and edit, saved in Redis with the passcode encrypted: :mod:`pipeline.saved`), field
mappings with a preview, the event debugger, and the dead letters (filtered, paged, replayed, purged), on
the same code the CLI uses. Starlette with Jinja2 templates and no JavaScript at all: plain forms.

Access: a login with ``CLEVERTAP_CONSOLE_PASSWORD``; sessions in signed cookies (SameSite=Strict,
HttpOnly); a CSRF token in every form; no secret and no record in a URL (ids and filters only); security
headers on every answer; request bodies limited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import constants as C
from pipeline.config import IntegrationConfig, Settings, available_presets
from pipeline.deadletters import count, drop, replay, scan
from pipeline.ingest import Ingestor, bad_input
from pipeline.saved import LiveSettings, SavedIntegrations
from pipeline.status import integration_status
from pipeline.store import Store

#: Largest request body the console reads (the preview's pasted events are the big one).
MAX_BODY = 512 * 1024
PAGE = 50
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


class Guard:
    """Security headers on every answer, and a bound on every request body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a time (YYYY-MM-DDTHH:MM, UTC)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_event_renames(text: str) -> tuple[dict[str, str], list[str]]:
    """``Signal name = CleverTap name`` lines."""
    out, errors = {}, []
    for n, line in enumerate(_lines(text), start=1):
        old, sep, new = line.partition("=")
        if not sep or not old.strip() or not new.strip():
            errors.append(f"line {n}: write Signal name = CleverTap name")
        else:
            out[old.strip()] = new.strip()
    return out, errors


def parse_property_renames(text: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``Signal event: source property = CleverTap property`` lines."""
    out: dict[str, dict[str, str]] = {}
    errors = []
    for n, line in enumerate(_lines(text), start=1):
        event, sep, rest = line.partition(":")
        source, sep2, target = rest.partition("=")
        if not sep or not sep2 or not event.strip() or not source.strip() or not target.strip():
            errors.append(f"line {n}: write Signal event: source property = CleverTap property")
        else:
            out.setdefault(event.strip(), {})[source.strip()] = target.strip()
    return out, errors


def event_renames_text(renames: dict[str, str]) -> str:
    return "\n".join(f"{k} = {v}" for k, v in renames.items())


def property_renames_text(renames: Any) -> str:
    return "\n".join(f"{ev}: {src} = {tgt}" for ev, props in renames.items() for src, tgt in props.items())


def create_console(
    password: str,
    session_secret: str,
    live: LiveSettings,
    https_only: bool = False,
) -> ASGIApp:
    """The console app. ``live`` gives the current settings (with the console's integrations)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("pipeline").joinpath("console_templates"))),
        autoescape=True,  # every value a page shows is escaped: dead letters hold whatever arrived
    )
    templates = Jinja2Templates(env=env)
    templates.env.filters["when"] = _when
    password_digest = hashlib.sha256(password.encode()).digest()
    store: Store = live.store
    saved: SavedIntegrations = live.saved

    def settings() -> Settings:
        return live.current()

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(24)
        return str(token)

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        page: Response = templates.TemplateResponse(
            request,
            template,
            {"csrf": csrf(request), "user": request.session.get("user"), "path": request.url.path, **context},
            status_code=status,
        )
        return page

    async def form(request: Request) -> FormData:
        data = await request.form(max_files=0, max_fields=500, max_part_size=MAX_BODY)
        given = str(data.get("csrf", ""))
        if not given or not hmac.compare_digest(given, str(request.session.get("csrf", ""))):
            raise HTTPException(403, "the form is stale or not ours (CSRF check failed): reload the page")
        return data

    Handler = Callable[[Request], Awaitable[Response]]

    def login_required(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            sid = request.session.get("sid")
            if (
                not request.session.get("user")
                or time.time() > request.session.get("until", 0)
                or not sid
                or not store.r.exists(session_key(str(sid)))
            ):
                request.session.clear()
                return RedirectResponse("/login", status_code=303)
            return await handler(request)

        return guarded

    # ------------------------------------------------------------------------------------------ login

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "login.html")
        data = await form(request)
        given = hashlib.sha256(str(data.get("password", "")).encode()).digest()
        if not hmac.compare_digest(given, password_digest):
            await asyncio.sleep(0.5)  # a guess costs time (without holding up anyone else)
            return render(request, "login.html", status=401, error="wrong password")
        request.session.clear()  # a new session on login: nothing from before carries over
        sid = secrets.token_urlsafe(24)
        # The session also lives in Redis: logging out ends it for good, even for a copied cookie.
        store.r.set(session_key(sid), "1", ex=SESSION_S)
        request.session.update(
            user="admin", sid=sid, until=time.time() + SESSION_S, csrf=secrets.token_urlsafe(24)
        )
        return RedirectResponse("/integrations", status_code=303)

    async def logout(request: Request) -> Response:
        await form(request)
        sid = request.session.get("sid")
        if sid:
            store.r.delete(session_key(str(sid)))
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    def session_key(sid: str) -> str:
        return f"{store.prefix}:console:session:{hashlib.sha256(sid.encode()).hexdigest()}"

    async def home(request: Request) -> Response:
        return RedirectResponse("/integrations", status_code=303)

    # ----------------------------------------------------------------------------------- integrations

    def integration_or_404(name: str) -> IntegrationConfig:
        config = settings().integrations.get(name)
        if config is None:
            raise HTTPException(404, f"no integration {name[:64]!r}")
        return config

    @login_required
    async def integrations(request: Request) -> Response:
        s = settings()
        rows = []
        for name in sorted(s.integrations):
            status = integration_status(s, store, name)
            state = "idle"
            if not status["auth_ok"]:
                state = "auth failing"
            elif status["held"]:
                state = "held"
            elif status["effective_limit"] < status["limit"]:
                state = "throttled"
            elif status["pending"] or status["open_batches"]:
                state = "delivering"
            rows.append({"name": name, "config": s.integrations[name], "status": status, "state": state})
        _, broken = saved.built()
        q = request.query_params
        return render(
            request,
            "integrations.html",
            rows=rows,
            broken=broken,
            saved_ok=q.get("saved"),
            done=q.get("done"),
        )

    @login_required
    async def delete_integration(request: Request) -> Response:
        """Delete an integration saved in the console: one that cannot be decrypted (saved with another
        key), or one with nothing queued, open or held (its records would have nowhere to go)."""
        name = request.path_params["name"]
        await form(request)
        if saved.spec(name) is None:
            raise HTTPException(404, "not an integration saved in the console")
        if name in settings().integrations:
            depth = store.depth(name)
            if depth["pending"] or depth["open_batches"] or depth["held_batches"]:
                raise HTTPException(409, f"{name} still has records queued or batches open: let them drain")
        saved.delete(name)
        live.invalidate()
        return RedirectResponse(f"/integrations?{urlencode({'done': f'deleted {name}'})}", status_code=303)

    def blank_form() -> dict[str, Any]:
        return {
            "name": "", "account_id": "", "region": "", "preset": "default", "consent_categories": "",
            "batch_size": str(C.MAX_BATCH_SIZE), "max_concurrency": str(C.MAX_CONCURRENCY), "api_url": "",
        }  # fmt: skip

    def form_of(config: IntegrationConfig) -> dict[str, Any]:
        return {
            "name": config.name,
            "account_id": config.account_id,
            "region": config.region,
            "preset": "default",
            "consent_categories": ", ".join(config.consent_categories),
            "batch_size": str(config.batch_size),
            "max_concurrency": str(config.max_concurrency),
            "api_url": config.api_url or "",
        }

    def spec_from(values: dict[str, str], old: dict[str, Any] | None) -> dict[str, Any]:
        spec: dict[str, Any] = {k: v for k, v in (old or {}).items() if k != "passcode_enc"}
        spec.update(
            account_id=values["account_id"].strip(),
            region=values["region"].strip(),
            preset=values["preset"].strip() or "default",
            consent_categories=[c.strip() for c in values["consent_categories"].split(",") if c.strip()],
            api_url=values["api_url"].strip() or None,
        )
        for key in ("batch_size", "max_concurrency"):
            text = values[key].strip()
            spec[key] = int(text) if text.lstrip("-").isdigit() else text  # the schema names a bad one
        return spec

    def show_form(
        request: Request, values: dict[str, Any], new: bool, readonly: bool, errors: dict[str, str]
    ) -> Response:
        return render(
            request,
            "integration_form.html",
            status=400 if errors else 200,
            values=values,
            new=new,
            readonly=readonly,
            errors=errors,
            regions=C.REGIONS,
            presets=available_presets(),
        )

    @login_required
    async def integration_form(request: Request) -> Response:
        name: str = request.path_params.get("name", "")
        new = not name
        if not new:
            config = integration_or_404(name)
            if config.origin != "console":
                return show_form(request, form_of(config), new=False, readonly=True, errors={})
        if request.method == "GET":
            values = blank_form() if new else form_of(integration_or_404(name))
            return show_form(request, values, new=new, readonly=False, errors={})
        data = await form(request)
        values = {k: str(data.get(k, "")) for k in blank_form()}
        if not new:
            values["name"] = name
        passcode = str(data.get("passcode", "")) or None
        write_key = str(data.get("write_key", "")) or None
        spec = spec_from(values, None if new else saved.spec(name))
        errors = saved.check(values["name"].strip(), spec, passcode, settings(), new, write_key)
        if errors:
            return show_form(request, values, new=new, readonly=False, errors=errors)
        saved.save(values["name"].strip(), spec, passcode, write_key)
        live.invalidate()
        return RedirectResponse(
            f"/integrations?{urlencode({'saved': values['name'].strip()})}", status_code=303
        )

    # --------------------------------------------------------------------------------------- mappings

    @login_required
    async def mappings(request: Request) -> Response:
        config = integration_or_404(request.path_params["name"])
        context: dict[str, Any] = {
            "config": config,
            "preset": config.preset,
            "events_text": event_renames_text(dict(config.event_renames)),
            "properties_text": property_renames_text(config.property_renames),
            "events_input": "",
            "errors": [],
            "preview": None,
            "saved_ok": False,
        }
        if request.method == "GET":
            return render(request, "mappings.html", **context)
        data = await form(request)
        events_text = str(data.get("events_text", ""))
        properties_text = str(data.get("properties_text", ""))
        renames, errors = parse_event_renames(events_text)
        props, prop_errors = parse_property_renames(properties_text)
        errors += prop_errors
        context.update(events_text=events_text, properties_text=properties_text, errors=errors,
                       events_input=str(data.get("events_input", "")))  # fmt: skip
        if errors:
            return render(request, "mappings.html", status=400, **context)
        trial = dataclasses.replace(config, event_renames=renames, property_renames=props)
        if data.get("action") == "save":
            if config.origin != "console":
                context["errors"] = ["this integration comes from the environment or the config file: "
                                     "edit its mappings there"]  # fmt: skip
                return render(request, "mappings.html", status=400, **context)
            old = saved.spec(config.name) or {}
            saved.save(config.name, {**old, "events": renames, "properties": props}, None)
            live.invalidate()
            context["saved_ok"] = True
        context["preview"] = preview_lines(trial, context["events_input"])
        return render(request, "mappings.html", **context)

    def preview_lines(config: IntegrationConfig, text: str) -> list[dict[str, Any]]:
        numbered = []
        for n, line in enumerate(text.splitlines()[:500], start=1):
            if not line.strip():
                continue
            try:
                numbered.append((n, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                numbered.append((n, bad_input(line[:80], f"not JSON: {exc}")))
        out = []
        for result in Ingestor(store, config).preview(numbered, check_store=False):
            out.append(
                {
                    "line": result.index,
                    "outcome": result.status.value,
                    "records": [orjson.dumps(r, option=orjson.OPT_INDENT_2).decode() for r in result.records],
                    "reasons": result.reasons,
                    "warnings": result.warnings,
                }
            )
        return out

    # --------------------------------------------------------------------------------------- debugger

    @login_required
    async def debugger(request: Request) -> Response:
        s = settings()
        chosen = request.query_params.get("integration", "")
        failed = request.query_params.get("failed") == "1"
        names = [chosen] if chosen in s.integrations else sorted(s.integrations)
        entries = sorted(
            ({"integration": n, **e} for n in names for e in store.debug_entries(n)),
            key=lambda e: -float(e["time"]),
        )
        if failed:
            entries = [e for e in entries if e["result"] != "delivered"]
        return render(request, "debugger.html", entries=entries[:200], names=sorted(s.integrations),
                      chosen=chosen, failed=failed)  # fmt: skip

    @login_required
    async def debugger_show(request: Request) -> Response:
        name, batch = request.path_params["name"], request.path_params["batch"]
        integration_or_404(name)
        found = [e for e in store.debug_entries(name, 100_000) if e["batch_id"] == batch]
        if not found:
            raise HTTPException(404, "no attempt of that batch is kept (the debugger keeps the last ones)")
        for entry in found:
            entry["refused"] = []
            try:
                body = orjson.loads(entry["body"])
                entry["pretty"] = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
                for row in body.get("unprocessed") or [] if isinstance(body, dict) else []:
                    if isinstance(row, dict):
                        entry["refused"].append({"code": row.get("code"), "error": row.get("error")})
            except orjson.JSONDecodeError:
                entry["pretty"] = entry["body"]
        return render(request, "debugger_show.html", name=name, batch=batch, entries=found)

    # ----------------------------------------------------------------------------------- dead letters

    def filters(request: Request) -> tuple[dict[str, Any], list[str]]:
        q = request.query_params
        errors: list[str] = []
        stage = q.get("stage") or None
        if stage not in (None, "api", "mapping"):
            errors.append("stage: api or mapping")
            stage = None
        code_text = q.get("code", "").strip()
        code = int(code_text) if code_text.isascii() and code_text.isdigit() and len(code_text) < 7 else None
        if code_text and code is None:
            errors.append("code: a number")
        since = until = None
        try:
            since = _parse_time(q.get("since", ""))
            until = _parse_time(q.get("until", ""))
        except ValueError as exc:
            errors.append(str(exc))
        return {"stage": stage, "code": code, "since": since, "until": until}, errors

    @login_required
    async def dead_letters(request: Request) -> Response:
        s = settings()
        name = request.query_params.get("integration") or (
            sorted(s.integrations)[0] if s.integrations else ""
        )
        integration_or_404(name)
        chosen, errors = filters(request)
        after_ms = request.query_params.get("after_ms", "-inf")
        if after_ms != "-inf" and not re.fullmatch(r"-?[0-9]{1,16}", after_ms):
            raise HTTPException(400, "after_ms: a page cursor, as the Next page link gives it")
        after = (after_ms, request.query_params.get("after_id", "")[:100])
        shown: list[dict[str, Any]] = []
        next_cursor: tuple[str, str] | None = None
        # PAGE matches, reading at most 20 pages of the store's (a rare code is found page by page)
        pages = scan(store, name, chosen["stage"], chosen["code"], chosen["since"], chosen["until"], after)
        for read, page in enumerate(pages, start=1):
            cursor = page.end
            for at, entry in page.matches:
                shown.append(entry)
                if len(shown) >= PAGE:
                    cursor = at
                    break
            if len(shown) >= PAGE or read >= 20:
                next_cursor = cursor
                break
        totals = count(store, name)
        query = {k: v for k, v in request.query_params.items() if k not in ("after_ms", "after_id")}
        return render(request, "dead_letters.html", name=name, names=sorted(s.integrations), entries=shown,
                      errors=errors, query=query, next_cursor=next_cursor, totals=totals,
                      total=sum(totals.values()), done=request.query_params.get("done"))  # fmt: skip

    @login_required
    async def dead_letter_show(request: Request) -> Response:
        name, did = request.path_params["name"], request.path_params["id"]
        integration_or_404(name)
        (raw,) = store.dead_letters(name, [did])
        if raw is None:
            raise HTTPException(404, "no such dead letter (replayed, purged or expired)")
        entry = orjson.loads(raw)
        return render(request, "dead_letter_show.html", name=name, entry=entry,
                      pretty=orjson.dumps(entry, option=orjson.OPT_INDENT_2).decode())  # fmt: skip

    @login_required
    async def dead_letters_act(request: Request) -> Response:
        name = request.path_params["name"]
        config = integration_or_404(name)
        data = await form(request)
        action = str(data.get("action", ""))
        everything = data.get("scope") == "matching"
        ids = [] if everything else [str(i) for i in data.getlist("id")][: PAGE * 10]
        chosen, errors = filters(request)
        if errors:
            raise HTTPException(400, "; ".join(errors))
        if not ids and not everything:
            return RedirectResponse(_back(name, request, "nothing selected"), status_code=303)
        if action == "replay":
            res = await run_in_threadpool(
                replay, store, config, ids or None, chosen["stage"], chosen["code"], None, chosen["since"],
                chosen["until"],
            )  # fmt: skip
            done = (f"replayed {res.replayed_records} records, remapped {res.remapped_events} events, "
                    f"{res.rejected_again} rejected again, {len(res.missing)} missing")  # fmt: skip
        elif action == "purge":
            if data.get("confirm") != "yes":
                return RedirectResponse(_back(name, request, "tick 'for good' to purge"), status_code=303)
            n = await run_in_threadpool(
                drop,
                store,
                name,
                ids or None,
                chosen["stage"],
                chosen["code"],
                chosen["since"],
                chosen["until"],
            )
            done = f"purged {n} dead letters"
        else:
            raise HTTPException(400, "unknown action")
        return RedirectResponse(_back(name, request, done), status_code=303)

    def _back(name: str, request: Request, done: str) -> str:
        query = {k: v for k, v in request.query_params.items() if k in ("stage", "code", "since", "until")}
        return "/dead-letters?" + urlencode({"integration": name, **query, "done": done})

    async def error_page(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        page: Response = templates.TemplateResponse(
            request, "error.html", {"status": status, "detail": detail, "user": None, "path": "", "csrf": ""},
            status_code=status,
        )  # fmt: skip
        return page

    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/integrations", integrations),
        Route("/integrations/new", integration_form, methods=["GET", "POST"]),
        Route("/integrations/{name}/edit", integration_form, methods=["GET", "POST"]),
        Route("/integrations/{name}/mappings", mappings, methods=["GET", "POST"]),
        Route("/integrations/{name}/delete", delete_integration, methods=["POST"]),
        Route("/debugger", debugger),
        Route("/debugger/{name}/{batch}", debugger_show),
        Route("/dead-letters", dead_letters),
        Route("/dead-letters/{name}/act", dead_letters_act, methods=["POST"]),
        Route("/dead-letters/{name}/{id}", dead_letter_show),
        Mount("/static", StaticFiles(directory=str(resources.files("pipeline").joinpath("console_static")))),
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
    return Guard(app)  # outermost: error pages (500s included) get the security headers too


def session_secret(password: str, key: str | None) -> str:
    """The cookie-signing secret: derived from the console key and password (so a new password ends every
    session), never shown."""
    material = f"{key or ''}\x00{password}".encode()
    return hashlib.sha256(b"clevertap-console-session\x00" + material).hexdigest()
