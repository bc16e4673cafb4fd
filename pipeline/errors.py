"""One small exception tree. Retry signals are not errors and live in :mod:`pipeline.policy`."""

from __future__ import annotations

import traceback
from pathlib import Path


class PipelineError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """The configuration is invalid; ``errors`` lists every problem as ``(key path, message)``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors))


class UnknownIntegration(PipelineError):
    """An integration name that the configuration does not define."""


class InputError(PipelineError):
    """Input that cannot be read at all (not a file, not JSON lines, not a JSON array)."""


class QueueFull(PipelineError):
    """An integration's queue is past its high-water mark: nothing was queued; try again later."""


class DeliveryError(PipelineError):
    """A batch was sent but CleverTap did not store all of it; the details are in the dead letters."""


class PartialDelivery(DeliveryError):
    """CleverTap answered ``partial`` or ``fail``: some rows were rejected and dead-lettered."""


class BatchRefused(DeliveryError):
    """CleverTap refused the whole request (a 4xx other than 401/403/413/429): every row dead-lettered."""


class BatchGivenUp(DeliveryError):
    """A batch kept failing past its give-up age and was dead-lettered with the last error."""


def where(exc: BaseException) -> str:
    """An exception's type and the line that raised it, never its message: an HTTP library's message can
    quote header values (the passcode), a mapping error's the event (an email)."""
    tb = traceback.extract_tb(exc.__traceback__)
    return (
        f"{type(exc).__name__} at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else type(exc).__name__
    )
