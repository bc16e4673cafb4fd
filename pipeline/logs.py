"""Log lines as text (the default) or as one JSON object per line (``log_format = "json"``, or
``CLEVERTAP_LOG_FORMAT=json``), for log pipelines that index fields.

Every batch outcome is logged once, by ``pipeline.delivery`` on the ``pipeline.outcomes`` logger, with its
fields attached (``extra={"outcome": {...}}``): in JSON they become top-level keys (integration, batch_id,
records, status, http_status, processed, rejected, codes, attempt, latency_s, detail). Other extras are
left out (Celery attaches task arguments, which for an ingest message are events), so no JSON line holds a
record or the passcode.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from celery import current_task

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the task's ``task_id`` and
    ``task_name`` inside a Celery task, and an ``outcome``'s fields at the top level. Nothing else a caller
    attached is written: Celery attaches a task's arguments to its own lines (``extra={"data": ...}``), and
    an ingest message's arguments are events, which hold emails."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task = _current_task()
        if task is not None:
            out["task_id"], out["task_name"] = task
        outcome = getattr(record, "outcome", None)
        if isinstance(outcome, dict):
            out.update(outcome)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _current_task() -> tuple[str, str] | None:
    """(id, name) of the Celery task running in this thread, if any."""
    request = getattr(current_task, "request", None) if current_task else None
    task_id = getattr(request, "id", None)
    return (task_id, current_task.name) if task_id else None


def use_format(fmt: str, logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger) the format ``fmt``: "json" for
    JsonFormatter; "text" leaves them as they are."""
    if fmt != "json":
        return
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())


def uvicorn_log_config(fmt: str) -> dict[str, Any]:
    """uvicorn's logging (the collector, the console), for every worker process: warnings and errors on
    stderr, as text or one JSON object per line (``log_format``). No access log: it would say nothing the
    counters do not."""
    formatter: dict[str, Any] = (
        {"()": "pipeline.logs.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "uvicorn": {"level": "INFO"},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING", "propagate": False},
            "pipeline": {"level": "INFO"},
        },
    }
