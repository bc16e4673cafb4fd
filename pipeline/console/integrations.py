"""Integrations: the list with each one's state, add and edit (saved in Redis with the passcode
encrypted: :mod:`pipeline.saved`), delete, and the field mappings with a preview."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline import constants as C
from pipeline.config import IntegrationConfig
from pipeline.console.forms import (
    blank_form,
    event_renames_text,
    form_of,
    parse_event_renames,
    parse_property_renames,
    property_renames_text,
    spec_from,
)
from pipeline.console.web import console_of, form, integration_or_404, login_required, render
from pipeline.ingest import Ingestor, bad_input
from pipeline.presets import available_presets
from pipeline.status import integration_status
from pipeline.store import Store

#: Lines of pasted events the mapping preview maps at most.
PREVIEW_LINES = 500


def _state(status: dict[str, Any]) -> str:
    if status["not_served_since"] is not None:
        return "not served"
    if not status["auth_ok"]:
        return "auth failing"
    if status["held"]:
        return "held"
    if status["effective_limit"] < status["limit"]:
        return "throttled"
    if status["pending"] or status["open_batches"] or status["queued_in_batches"]:
        return "delivering"
    if status["imports"]:
        return "importing"
    return "idle"


@login_required
async def integrations(request: Request) -> Response:
    console = console_of(request)
    s = console.settings()
    rows = []
    for name in sorted(s.integrations):
        status = integration_status(s, console.store, name)
        rows.append({"name": name, "config": s.integrations[name], "status": status, "state": _state(status)})
    _, broken = console.saved.built()
    q = request.query_params
    return render(request, "integrations.html", rows=rows, broken=broken, saved_ok=q.get("saved"),
                  done=q.get("done"))  # fmt: skip


@login_required
async def delete_integration(request: Request) -> Response:
    """Delete an integration saved in the console: one that cannot be decrypted (saved with another key),
    or one with nothing queued, open or held (its records would have nowhere to go)."""
    console = console_of(request)
    name = request.path_params["name"]
    await form(request)
    if console.saved.spec(name) is None:
        raise HTTPException(404, "not an integration saved in the console")
    if name in console.settings().integrations:
        depth = console.store.depth(name)
        if (
            depth["pending"]
            or depth["open_batches"]
            or depth["held_batches"]
            or console.store.active_imports(name)
        ):
            raise HTTPException(409, f"{name} still has records queued, batches open or an import running")
    console.saved.delete(name)
    console.live.invalidate()
    return RedirectResponse(f"/integrations?{urlencode({'done': f'deleted {name}'})}", status_code=303)


def _show_form(
    request: Request, values: dict[str, Any], new: bool, readonly: bool, errors: dict[str, str]
) -> Response:
    return render(request, "integration_form.html", status=400 if errors else 200, values=values, new=new,
                  readonly=readonly, errors=errors, regions=C.REGIONS,
                  presets=available_presets())  # fmt: skip


@login_required
async def integration_form(request: Request) -> Response:
    console = console_of(request)
    name: str = request.path_params.get("name", "")
    new = not name
    if not new:
        config = integration_or_404(request, name)
        if config.origin != "console":
            return _show_form(request, form_of(config), new=False, readonly=True, errors={})
    if request.method == "GET":
        values = blank_form() if new else form_of(integration_or_404(request, name))
        return _show_form(request, values, new=new, readonly=False, errors={})
    data = await form(request)
    values = {k: str(data.get(k, "")) for k in blank_form()}
    if not new:
        values["name"] = name
    passcode = str(data.get("passcode", "")) or None
    write_key = str(data.get("write_key", "")) or None
    spec = spec_from(values, None if new else console.saved.spec(name))
    target = values["name"].strip()
    errors = console.saved.check(target, spec, passcode, console.settings(), new, write_key)
    for field in ("allowed_origins", "events_allow", "events_deny"):  # one list: beside its one field
        for path in [p for p in errors if p.startswith(field + ".")]:
            errors.setdefault(field, errors.pop(path))
    if errors:
        return _show_form(request, values, new=new, readonly=False, errors=errors)
    console.saved.save(target, spec, passcode, write_key)
    console.live.invalidate()
    return RedirectResponse(f"/integrations?{urlencode({'saved': target})}", status_code=303)


@login_required
async def mappings(request: Request) -> Response:
    console = console_of(request)
    config = integration_or_404(request, request.path_params["name"])
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
        old = console.saved.spec(config.name) or {}
        console.saved.save(config.name, {**old, "events": renames, "properties": props}, None)
        console.live.invalidate()
        context["saved_ok"] = True
    context["preview"] = preview_lines(console.store, trial, context["events_input"])
    return render(request, "mappings.html", **context)


def preview_lines(store: Store, config: IntegrationConfig, text: str) -> list[dict[str, Any]]:
    """The pasted events (one JSON object a line) as ``config`` maps them, line by line."""
    numbered = []
    for n, line in enumerate(text.splitlines()[:PREVIEW_LINES], start=1):
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
