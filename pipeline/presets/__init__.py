"""Presets: field mappings as data. Each ``<name>.json`` in this package is one (``default.json``: the
spec's Default preset); :func:`load_preset` reads it into a :class:`Preset`, which ``pipeline.mapping``
applies and an integration's own renames refine."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

from pipeline.errors import UnknownIntegration


@dataclass(frozen=True)
class Preset:
    """Field mappings as data: event renames; per source event, target property <- source candidates; per
    CleverTap profile key, the trait names it is read from (the first present wins); and the trait names
    a Name is put together from when there is no ``name``."""

    name: str  # as shown ("Default")
    events: Mapping[str, str]
    properties: Mapping[str, Mapping[str, tuple[str, ...]]]
    profile: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    name_parts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    key: str = ""  # as configured: the file's name ("default" for default.json), what `preset = ...` names


def load_preset(name: str) -> Preset:
    try:
        text = resources.files("pipeline.presets").joinpath(f"{name}.json").read_text("utf-8")
    except FileNotFoundError:
        raise UnknownIntegration(f"unknown preset {name!r}") from None
    raw = json.loads(text)
    return Preset(
        key=name,
        name=raw["name"],
        events=dict(raw["events"]),
        properties={
            ev: {target: tuple(sources) for target, sources in props.items()}
            for ev, props in raw.get("properties", {}).items()
        },
        profile={target: tuple(sources) for target, sources in raw.get("profile", {}).items()},
        name_parts={part: tuple(sources) for part, sources in raw.get("name_parts", {}).items()},
    )


def available_presets() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files("pipeline.presets").iterdir()
        if p.name.endswith(".json")
    )
