"""The console's forms as plain data: an integration's form fields to and from its saved settings, and
the mapping editor's text lines to and from renames. Pure functions, tested without a server."""

from __future__ import annotations

from typing import Any

from pipeline import constants as C
from pipeline.config import IntegrationConfig

#: The fields of the integration form, as text.
FIELDS = ("name", "account_id", "region", "preset", "consent_categories", "batch_size", "max_concurrency",
          "api_url", "allowed_origins", "events_allow", "events_deny")  # fmt: skip


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _names(text: str) -> list[str]:
    """One name a line, blank lines skipped: no comments (an event may be named '#launch')."""
    return [line.strip() for line in text.splitlines() if line.strip()]


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


def blank_form() -> dict[str, Any]:
    return {
        "name": "", "account_id": "", "region": "", "preset": "default", "consent_categories": "",
        "batch_size": str(C.MAX_BATCH_SIZE), "max_concurrency": str(C.MAX_CONCURRENCY), "api_url": "",
        "allowed_origins": "", "events_allow": "", "events_deny": "",
    }  # fmt: skip


def form_of(config: IntegrationConfig) -> dict[str, Any]:
    """The form's fields for an integration as it is (its own preset, whichever it is)."""
    return {
        "name": config.name,
        "account_id": config.account_id,
        "region": config.region,
        "preset": config.preset.key,
        "consent_categories": ", ".join(config.consent_categories),
        "batch_size": str(config.batch_size),
        "max_concurrency": str(config.max_concurrency),
        "api_url": config.api_url or "",
        "allowed_origins": ", ".join(config.allowed_origins),
        "events_allow": "\n".join(config.events_allow),
        "events_deny": "\n".join(config.events_deny),
    }


def spec_from(values: dict[str, str], old: dict[str, Any] | None) -> dict[str, Any]:
    """The settings to save from the form's fields, on top of what was saved (``old``): the form edits
    some settings, and the others (mappings among them) stay as they were."""
    spec: dict[str, Any] = {k: v for k, v in (old or {}).items() if k != "passcode_enc"}
    spec.update(
        account_id=values["account_id"].strip(),
        region=values["region"].strip(),
        preset=values["preset"].strip() or "default",
        consent_categories=[c.strip() for c in values["consent_categories"].split(",") if c.strip()],
        api_url=values["api_url"].strip() or None,
        allowed_origins=[o.strip() for o in values.get("allowed_origins", "").split(",") if o.strip()],
        # one event name a line (a name may hold a comma, or begin with '#')
        events_allow=_names(values.get("events_allow", "")),
        events_deny=_names(values.get("events_deny", "")),
    )
    for key in ("batch_size", "max_concurrency"):
        text = values[key].strip()
        spec[key] = int(text) if text.lstrip("-").isdigit() else text  # the schema names a bad one
    return spec
