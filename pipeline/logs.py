"""Log lines as text (the default) or as one JSON object per line (``log_format = "json"``, or
``CLEVERTAP_LOG_FORMAT=json``), for log pipelines that index fields.

Every batch outcome is logged once, by ``pipeline.delivery`` on the ``pipeline.outcomes`` logger, with its
fields attached (``extra={"outcome": {...}}``): in JSON they become top-level keys (integration, batch_id,
records, status, http_status, processed, rejected, codes, attempt, latency_s, detail). No log line holds a
record or the passcode.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

FORMATS = ("text", "json")

#: LogRecord attributes that are not ``extra``: everything else a caller attached is kept in JSON.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the record's extras
    (``outcome``'s fields at the top level; Celery's task_name and task_id when it adds them)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key == "outcome" and isinstance(value, dict):
                out.update(value)
            elif key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def use_format(fmt: str, logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger) the format ``fmt``: "json" for
    JsonFormatter; "text" leaves them as they are."""
    if fmt != "json":
        return
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
