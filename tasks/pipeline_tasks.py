"""Thin tasks: each a few lines calling into ``pipeline``. Arguments are ids and counts, never records or
secrets, because Flower, logs and the broker show them."""

from __future__ import annotations

from typing import Any

from pipeline import runtime
from tasks.celeryapp import app


@app.task(name="clevertap.ingest")
def ingest(events: list[Any], integration: str = "default") -> dict[str, int]:
    """Ingest events sent by an upstream service. Returns counts only: rejections are dead letters."""
    return runtime.ingest(events, integration).counts()
