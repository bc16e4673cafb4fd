"""Thin tasks: each a few lines calling into ``pipeline``. Arguments are ids and counts, never records or
secrets, because Flower, logs and the broker show them."""

from __future__ import annotations

import logging
from typing import Any

from celery.utils.time import get_exponential_backoff_interval

from pipeline import runtime
from pipeline.delivery import Deliverer
from pipeline.errors import DeliveryError, QueueFull, UnknownIntegration, where
from pipeline.forget import Who, scrub_suppressed
from pipeline.ingest import TRANSIENT_REDIS_ERRORS
from pipeline.store import StaleForgotten
from tasks.celeryapp import app

log = logging.getLogger("pipeline.tasks")


def _dispatch(integration: str, batch_id: str, countdown: float, generation: int) -> None:
    send_batch.apply_async((integration, batch_id, generation), countdown=countdown or None)


def _deliverer() -> Deliverer:
    return runtime.deliverer(_dispatch)


def _dispatch_forget(request_id: str) -> None:
    forget.apply_async((request_id,))


# While Redis is away the task retries (the same task id; the events stay in the message), with backoff up
# to 5 minutes, for as long as it takes: a retry resumes after the chunks already queued. Anything else
# that stops a chunk makes its events mapping dead letters. Either way no event is dropped. A forgotten
# user's events do not go back into the retry's message: they become placeholders (pipeline.forget), which
# keep the others' positions for the resume and are filtered as forgotten.
RETRIED = (*TRANSIENT_REDIS_ERRORS, QueueFull, UnknownIntegration, StaleForgotten)


@app.task(name="clevertap.ingest", bind=True, max_retries=None)
def ingest(self: Any, events: list[Any], integration: str = "default") -> dict[str, int]:
    """Ingest events sent by an upstream service. Returns counts only: rejections are dead letters."""
    try:
        return runtime.ingest(events, integration, message_id=self.request.id).counts()
    except RETRIED as exc:
        # UnknownIntegration too: one the console saves reaches this worker within seconds (or this worker
        # lacks CLEVERTAP_CONSOLE_KEY: the error says so on every try), and the events wait in the message.
        log.error(
            "clevertap.ingest %s: not queued now (%s), try %d; %d events wait in the message and the next "
            "try resumes after the chunks already queued",
            self.request.id, where(exc), self.request.retries + 1, len(events),
        )  # fmt: skip
        try:
            kept = scrub_suppressed(events, runtime.store().forgotten_view(integration, refresh=True)[1])
        except Exception:  # Redis away: the message goes as it came (a forget in progress rewrites it)
            kept = events
        countdown = get_exponential_backoff_interval(1, self.request.retries, 300, full_jitter=True)
        raise self.retry(
            args=(kept, integration),
            kwargs={},
            exc=exc,
            countdown=countdown,
            argsrepr=f"[<{len(kept)} events>]",
        ) from exc


@app.task(name="clevertap.assemble")
def assemble() -> dict[str, int] | None:
    """Move waiting records into batches of up to batch_size and publish a send for each."""
    made = _deliverer().assemble_exclusive()
    if made:
        log.info("assembled %s", ", ".join(f"{n} batches for {i}" for i, n in made.items()))
    return made


# A batch with rows dead-lettered raises a DeliveryError (PartialDelivery, BatchRefused, BatchGivenUp) *after*
# its outcome is recorded, so Flower shows the task as failed with the counts; `throws` keeps it out of the
# worker's error tracebacks.
@app.task(name="clevertap.send_batch", throws=(DeliveryError,))
def send_batch(integration: str, batch_id: str, generation: int | None = None) -> str:
    """Send one stored batch under the account's in-flight limit and record the outcome. ``generation``
    tells this message from stale copies (None: a message from before generations). The outcome's log
    line is written by the deliverer (pipeline.outcomes)."""
    report = _deliverer().send(integration, batch_id, generation)
    error = report.error()
    if error is not None:
        raise error
    return report.result.value


@app.task(name="clevertap.sweep")
def sweep() -> dict[str, dict[str, int]]:
    """Re-publish stranded batches, start due auth probes, expire stale tokens; hand forget requests that are
    due (or whose worker died) to a worker."""
    found = _deliverer().sweep()
    for name, counts in found.items():
        if counts["redispatched"] or counts["probe"]:
            log.warning("sweep %s: %s", name, counts)
    runtime.forgetter(_dispatch_forget).sweep()
    return found


# The message carries the request's id only: its identities are in Redis (pipeline.forget), never in a
# task argument. Every step is safe to repeat: a redelivered message, or one the sweep sends again, takes
# the request from where it is.
@app.task(name="clevertap.forget")
def forget(request_id: str) -> str:
    """Forget a user: remove every copy in the pipeline, then ask CleverTap to delete the profile."""
    return runtime.forgetter(_dispatch_forget).run(request_id)


def request_forget(
    identities: list[str] | tuple[str, ...] = (),
    user_ids: list[str] | tuple[str, ...] = (),
    object_ids: list[str] | tuple[str, ...] = (),
    anonymous_ids: list[str] | tuple[str, ...] = (),
    integrations: list[str] | None = None,
) -> str:
    """For upstream jobs: write a forget request to Redis and send ``clevertap.forget`` with its id; returns
    the id (``clevertap-pipeline forget status ID``)."""
    who = Who(tuple(identities), tuple(user_ids), tuple(object_ids), tuple(anonymous_ids))
    request_id = runtime.forgetter(_dispatch_forget).ask(who, integrations, dispatching=True)
    _dispatch_forget(request_id)
    return request_id
