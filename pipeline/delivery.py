"""Delivery: assemble batches, send them under the account's token limit, record each outcome, sweep.

The Celery tasks are shells around :class:`Deliverer`; ``dispatch(integration, batch_id, countdown)`` is how
it asks for a send to be (re)scheduled, so everything here runs and is tested without Celery.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from pipeline import constants as C
from pipeline.client import UploadClient, join_records
from pipeline.config import IntegrationConfig, Settings
from pipeline.deadletters import api_dead_letter
from pipeline.errors import BatchGivenUp, BatchRefused, DeliveryError, PartialDelivery, where
from pipeline.limiter import Limiter, RedisTokens
from pipeline.policy import (
    Action,
    Attempt,
    BatchHistory,
    Classified,
    Decision,
    Kind,
    after_internal_error,
    classify,
    decide,
)
from pipeline.store import OUTAGE_ERRORS, Debug, LeaseStatus, Store, new_id

log = logging.getLogger("pipeline.delivery")
#: One line per send_batch run, with the outcome's fields attached (see pipeline.logs).
outcomes = logging.getLogger("pipeline.outcomes")

#: How delivery asks for a send of a batch to be published: (integration, batch id, countdown s, dispatch
#: generation). The generation makes every other message for that batch stale (see lua/lease.lua).
Dispatch = Callable[[str, str, float, int], None]
#: Batches moved per assemble script call: each call stays short (Redis runs one script at a time), and
#: the assembler calls again until the backlog is drained.
ASSEMBLE_STEP = 20
#: The assembler's lock: far longer than an assemble run (milliseconds; about a second for the largest
#: backlog), and what a killed assembler leaves behind holds assembly up for no longer than this.
ASSEMBLE_LOCK_TTL_S = 10.0
#: Bounded dispatch: an integration has at most this many times its account's limit of batches due to be
#: sent soon (cut, with a send message out), and 4 x that in all counting batches backing off (assemble.lua).
#: A backlog of millions waits as records in Redis, not as broker messages, and accounts take turns in the
#: send queue instead of queueing behind one another.
DISPATCH_AHEAD = 2
#: The backfill lane (imports) leaves this many of an integration's slots to live traffic: a live batch cut
#: while an import is sending finds one free at once (assemble_backfill.lua).
BACKFILL_RESERVE = 1
#: Batches the lane cuts past the slots it may use: each waits on a token (never a reserved one), so a slot
#: the lane frees is taken at once (assemble_backfill.lua; the reserve in acquire.lua).
BACKFILL_AHEAD = 2
#: The backfill lane's batch ids start so (a split's halves too): a send of one cuts the next at once.
BACKFILL_STEM = "imp-"
#: When this process last warned of records queued for an integration it does not serve, by name (one
#: warning a minute each, not one per assemble tick).
_WARNED: dict[str, float] = {}
#: How long a send waits for a token in-process before giving the batch back with a countdown.
TOKEN_WAIT_S = 0.5
#: On an event-loop pool (gevent) a waiting send costs a greenlet, not a thread another account needs, so
#: it waits longer and gives its batch back far less often: no gap when a token frees.
TOKEN_WAIT_COOPERATIVE_S = 5.0
#: Recording an outcome through a store outage: the first wait, the longest, and how long before the batch's
#: lease ends it stops (a tenth of the lease if that is shorter): past it the sweep may send the batch again.
RECORD_FIRST_DELAY_S = 0.1
RECORD_MAX_DELAY_S = 2.0
RECORD_MARGIN_S = 5.0


def cooperative() -> bool:
    """True in a worker whose sockets gevent made cooperative (``celery worker --pool gevent``)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


class SendResult(enum.StrEnum):
    """What one send of a batch came to (the ``clevertap.send_batch`` task returns it)."""

    DELIVERED = "delivered"  # every row stored
    PARTIAL = "partial"  # some rows refused by CleverTap: dead letters
    BAD_REQUEST = "bad_request"  # the whole request refused (4xx): every row a dead letter
    GAVE_UP = "gave_up"  # failing past give_up_age: every row a dead letter
    RETRY = "retry"  # sent again later (429, 5xx, network)
    HELD = "held"  # authentication failing: held until a probe succeeds
    NO_TOKEN = "no_token"  # noqa: S105 - the account's slots were all busy: given back with a short countdown
    SPLIT = "split"  # 413: sent again as two batches of half the records
    NOT_DUE = "not_due"  # the live message arrived before the batch was due: published again for then
    SKIPPED_GONE = "skipped:gone"  # not open any more (finished or held): a stale message
    SKIPPED_LEASED = "skipped:leased"  # another worker is sending it
    SKIPPED_HELD = "skipped:held"  # the integration fails authentication: moved to the held set
    SKIPPED_FINISHED = "skipped:finished-elsewhere"  # finished by another worker while this one sent it
    SKIPPED_STALE = "skipped:stale"  # a message for the batch that a later one replaced

    @property
    def is_error(self) -> bool:
        """Only a clean success is a delivery: a batch with rows dead-lettered surfaces as an error (the
        task fails, so Flower and the worker's log show it), after its outcome is recorded."""
        return self in _ERRORS


#: The error a send_batch task raises for each outcome that dead-lettered rows.
_ERRORS: dict[SendResult, type[DeliveryError]] = {
    SendResult.PARTIAL: PartialDelivery,
    SendResult.BAD_REQUEST: BatchRefused,
    SendResult.GAVE_UP: BatchGivenUp,
}


_SKIPPED = {
    LeaseStatus.GONE: SendResult.SKIPPED_GONE,
    LeaseStatus.LEASED: SendResult.SKIPPED_LEASED,
    LeaseStatus.HELD: SendResult.SKIPPED_HELD,
    LeaseStatus.STALE: SendResult.SKIPPED_STALE,
}


@dataclass
class SendReport:
    """What one send_batch run did; its ``summary`` is the log line (counts only, no records)."""

    integration: str
    batch_id: str
    result: SendResult
    records: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0
    detail: str = ""
    elapsed_s: float = 0.0
    attempt: int = 0  # which attempt at this batch this was (0: nothing was sent)
    http_status: int | None = None  # CleverTap's answer (None: none, or nothing was sent)
    latency_s: float = 0.0  # from sending the request to its answer

    @property
    def outcome(self) -> dict[str, Any]:
        """The fields of the outcome's log line (``--log-format json`` makes them top-level keys)."""
        return {
            "integration": self.integration,
            "batch_id": self.batch_id,
            "records": self.records,
            "status": self.result.value,
            "http_status": self.http_status,
            "processed": self.delivered,
            "rejected": self.dead_lettered,
            "codes": self.codes,
            "attempt": self.attempt,
            "latency_s": round(self.latency_s, 4),
            "delay_s": round(self.delay_s, 3),
            "detail": self.detail[:500],
        }

    @property
    def summary(self) -> str:
        text = f"batch {self.batch_id} [{self.integration}]: {self.result}"
        if self.records:
            text += f", {self.records} records"
        if self.result.is_error:
            codes = ", ".join(f"{code}x{n}" for code, n in sorted(self.codes.items()))
            text += f", {self.delivered} delivered, {self.dead_lettered} dead-lettered ({codes})"
        if self.result in (SendResult.RETRY, SendResult.NO_TOKEN):
            text += f", again in {self.delay_s:.2f} s"
        if self.detail:
            text += f": {self.detail}"
        if self.elapsed_s:
            text += f" ({self.elapsed_s:.2f} s)"
        return text

    @property
    def is_error(self) -> bool:
        return self.result.is_error

    def error(self) -> DeliveryError | None:
        """The error that says what happened to the batch (its summary: counts, never records), or None
        when it is not one."""
        kind = _ERRORS.get(self.result)
        return kind(self.summary) if kind else None


#: The event debugger keeps CleverTap's raw answer up to this size.
DEBUG_BODY_BYTES = 64 * 1024


def _debugger_entry(batch_id: str, records: int, attempt_no: int, attempt: Attempt) -> dict[str, Any]:
    """What the event debugger keeps of one attempt (the passcode is never in it: no request headers)."""
    body = attempt.body[:DEBUG_BODY_BYTES]
    return {
        "time": round(time.time(), 3),
        "batch_id": batch_id,
        "records": records,
        "attempt": attempt_no,
        "http_status": attempt.status,
        "latency_s": round(attempt.elapsed_s, 3),
        "error": attempt.error,
        "body": body.decode("utf-8", "replace"),
        "body_truncated": len(attempt.body) > DEBUG_BODY_BYTES,
    }


@dataclass(frozen=True)
class _Sent:
    """One attempt at a batch whose answer (or failure) is in: what recording its outcome needs."""

    config: IntegrationConfig
    batch_id: str
    owner: str
    records: list[bytes]
    attempt_no: int  # 1 for the first send of the batch
    attempt: Attempt
    history: BatchHistory  # the batch's, as its lease found it
    in_flight: int = 0  # this pipeline's requests to the account in flight with this one, when it went

    def debugger_entry(self, result: SendResult, reason: str) -> Debug:
        """The event debugger's entry for this attempt (None when the integration keeps none)."""
        if self.config.debugger_size <= 0:
            return None
        seen = _debugger_entry(self.batch_id, len(self.records), self.attempt_no, self.attempt)
        entry = {**seen, "result": result.value, "reason": reason[:500]}
        return orjson.dumps(entry), self.config.debugger_size


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        dispatch: Dispatch,
        client: UploadClient | None = None,
        limiter: Limiter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatch = dispatch
        self.client = client or UploadClient(settings.connect_timeout, settings.read_timeout)
        self.limiter = limiter or Limiter(RedisTokens(store))
        self.rng = rng or random.Random()
        self.owner = secrets.token_hex(6)
        self.token_wait_s = (
            min(TOKEN_WAIT_COOPERATIVE_S, settings.token_lease / 4) if cooperative() else TOKEN_WAIT_S
        )

    def with_settings(self, settings: Settings) -> Deliverer:
        """A deliverer for new settings that shares this one's HTTP session (while the timeouts stay the
        same: only integrations change at run time), store and limiter."""
        timeouts = (settings.connect_timeout, settings.read_timeout)
        same = timeouts == (self.settings.connect_timeout, self.settings.read_timeout)
        client = self.client if same else None
        return Deliverer(settings, self.store, self.dispatch, client, self.limiter, self.rng)

    @property
    def batch_lease_s(self) -> float:
        return self.settings.token_lease * C.BATCH_LEASE_FACTOR

    # ----------------------------------------------------------------------------------------- assemble

    def dispatch_cap(self, config: IntegrationConfig) -> int:
        """Open batches an integration may have: DISPATCH_AHEAD times its account's limit, shared among the
        integrations sending as that account. Everything past it waits in Redis as records."""
        sharing = sum(1 for c in self.settings.integrations.values() if c.account_id == config.account_id)
        return max(2, math.ceil(DISPATCH_AHEAD * config.max_concurrency / sharing))

    def fill(self, config: IntegrationConfig) -> int:
        """Cut and dispatch as many batches as the integration may have open; returns how many."""
        count = 0
        cap = self.dispatch_cap(config)
        while True:
            ids = self.store.assemble(
                config.name, config.batch_size, config.flush_interval, ASSEMBLE_STEP, cap
            )
            for bid in ids:
                self.dispatch(config.name, bid, 0.0, 1)
            count += len(ids)
            if len(ids) < ASSEMBLE_STEP:
                return count + self.fill_backfill(config)

    def backfill_slots(self, config: IntegrationConfig) -> int:
        """The integration's share of its account's in-flight limit as it is now (the adaptive one, while
        another client shares the account): what the backfill lane and live batches share."""
        sharing = sum(1 for c in self.settings.integrations.values() if c.account_id == config.account_id)
        effective = self.store.effective_limit(config.account_id, config.max_concurrency)
        return max(1, math.floor(min(effective, config.max_concurrency) / sharing))

    def fill_backfill(self, config: IntegrationConfig) -> int:
        """Cut and dispatch batches from the integration's import lanes, only while live traffic has none
        due and leaves slots free; returns how many."""
        slots = self.backfill_slots(config)
        reserve = BACKFILL_RESERVE
        # BACKFILL_AHEAD more than the slots: they wait on a token (never the reserved one), so a slot the
        # lane frees is taken at once instead of after a round trip through the broker.
        ids = self.store.assemble_backfill(
            config.name, config.batch_size, config.flush_interval, BACKFILL_STEM + new_id(),
            slots + BACKFILL_AHEAD, reserve, ASSEMBLE_STEP,
        )  # fmt: skip
        for bid in ids:
            self.dispatch(config.name, bid, 0.0, 1)
        return len(ids)

    def assemble(self) -> dict[str, int]:
        """Turn waiting records into batches for every integration that has any; dispatch each batch."""
        made: dict[str, int] = {}
        for name in sorted(self.store.ready_integrations()):
            config = self.settings.integrations.get(name)
            if config is None:
                self.store.mark_unserved(name)  # status and the console say so, from any process
                now = time.monotonic()
                if now - _WARNED.get(name, -math.inf) >= C.UNSERVED_WARN_EVERY_S:
                    _WARNED[name] = now
                    log.warning(
                        "records are queued for integration %r, which this worker does not serve: they wait "
                        "in Redis until it does (%s)", name, self.settings.unknown_hint(),
                    )  # fmt: skip
                continue
            count = self.fill(config)
            self.store.unready_if_empty(name)
            if count:
                made[name] = count
        return made

    def assemble_exclusive(self, ttl_s: float = ASSEMBLE_LOCK_TTL_S) -> dict[str, int] | None:
        """``assemble`` under a lock with a TTL, so runs never overlap, even from two beats started by
        mistake. None when another run holds the lock. (Overlap could not double-batch a record anyway:
        every move is atomic; the lock keeps partial batches from being cut early.)"""
        token = self.store.try_lock("assemble", ttl_s)
        if token is None:
            return None
        try:
            return self.assemble()
        finally:
            self.store.unlock("assemble", token)

    # --------------------------------------------------------------------------------------------- send

    def send(self, name: str, batch_id: str, generation: int | None = None) -> SendReport:
        """Send one batch for the message of dispatch ``generation`` (None: a message from before
        generations). Whatever CleverTap answers, and whatever goes wrong after it answered, the attempt is
        recorded: nothing loops for ever. Each run logs one line on ``pipeline.outcomes`` (an error for a
        partial, refused or given-up batch) with the outcome's fields attached."""
        report = self._send(name, batch_id, generation)
        level = logging.ERROR if report.is_error else logging.INFO
        if outcomes.isEnabledFor(level):
            outcomes.log(level, "%s", report.summary, extra={"outcome": report.outcome})
        return report

    def _send(self, name: str, batch_id: str, generation: int | None) -> SendReport:
        config = self.settings.integration(name)
        # One owner per send (not per process): threads of one worker never release each other's lease.
        owner = f"{self.owner}-{secrets.token_hex(4)}"
        lease = self.store.lease(name, batch_id, owner, self.batch_lease_s, generation)
        if lease.status is LeaseStatus.EARLY:
            delay = max(0.0, (lease.due_ms - lease.now_ms) / 1000)
            self.dispatch(name, batch_id, delay, generation or 0)  # still the live message: again when due
            return SendReport(name, batch_id, SendResult.NOT_DUE, delay_s=delay)
        if lease.status is not LeaseStatus.OK:
            return SendReport(name, batch_id, _SKIPPED[lease.status])
        if batch_id.startswith(BACKFILL_STEM):
            try:
                stopped = self.store.lane_batch_stopped(name, batch_id)
                if stopped:  # its import was cancelled while this batch waited or backed off: never sent
                    self.store.finish(name, batch_id, owner, 0, [], {"import_batches_dropped": 1})
            except OUTAGE_ERRORS as exc:
                return self._give_back(
                    config, batch_id, owner, None, time.monotonic() + self.batch_lease_s, exc
                )
            if stopped:
                return SendReport(
                    name, batch_id, _SKIPPED[LeaseStatus.GONE], detail="its import was cancelled"
                )
        started = time.perf_counter()
        lease_ends = time.monotonic() + self.batch_lease_s
        token: str | None = None
        in_flight = 0
        try:
            # The lane's batches never take the slot kept for live ones (BACKFILL_RESERVE), under the
            # account's limit as it is now (the adaptive one too), so a live batch finds it free.
            # (An account limited to one request at a time has no slot to spare: the lane shares it.)
            lane = batch_id.startswith(BACKFILL_STEM) and config.max_concurrency > BACKFILL_RESERVE
            reserve = BACKFILL_RESERVE if lane else 0
            token, in_flight = self.limiter.acquire_counted(
                config.account_id,
                config.max_concurrency,
                self.settings.token_lease,
                self.token_wait_s,
                reserve,
            )
            if token is None:
                delay = self.rng.uniform(0.1, 0.5)
                gen = self.store.unlease(name, batch_id, owner, delay)
                self.store.incr(name, "token_waits")
                if gen:
                    self.dispatch(name, batch_id, delay, gen)
                return SendReport(name, batch_id, SendResult.NO_TOKEN, delay_s=delay)
            records = self.store.batch_records(name, batch_id)
        except OUTAGE_ERRORS as exc:
            # Nothing was sent: give the batch back as soon as the store answers again, rather than leave
            # it leased (and the account's slot taken) until the lease ends.
            return self._give_back(config, batch_id, owner, token, lease_ends, exc)
        try:
            attempt = self.client.upload(config, join_records(records))
        except Exception as exc:
            # Not an HTTP outcome but a bug or an unexpected library error: a transient failure, so it
            # backs off and gives up like any other instead of failing the task on every sweep.
            # Type and place only: an HTTP library's message can quote header values (the passcode).
            log.error("batch %s [%s]: unexpected %s while sending", batch_id, name, where(exc))
            attempt = Attempt(None, error=f"internal error: {type(exc).__name__}")
        assert lease.history is not None  # an OK lease carries the batch's history
        sent = _Sent(
            config, batch_id, owner, records, lease.history.attempts + 1, attempt, lease.history, in_flight
        )
        # CleverTap has answered (or the request failed): record what that comes to before anything else,
        # through a store outage, for as long as the batch's lease lasts. A batch whose answer is not
        # recorded is sent again when its lease ends, and CleverTap has no idempotency key.
        report = self._record(sent, lease_ends)
        if attempt.cut:
            # Cut by this client after it was sent (it timed out), the request may still be in flight at
            # CleverTap until its next write fails or its work is done: its token is kept until its lease
            # ends, so the requests sent meanwhile count it (and draw no 429 for it).
            self._quietly(lambda: self.store.note_cut_request(config.account_id, config.max_concurrency))
        else:
            # Then give the token back; one that cannot be released ends with its lease.
            self._quietly(lambda: self.limiter.release(config.account_id, token, config.max_concurrency))
        if batch_id.startswith(BACKFILL_STEM):
            # Its slot is free: cut what is due now, not at the next tick: live batches first (a partial
            # one due holds the lane back until it is cut), then the lane's next.
            self._quietly(lambda: self.fill(config))
        report.elapsed_s = time.perf_counter() - started
        report.attempt, report.http_status = sent.attempt_no, attempt.status
        report.latency_s = attempt.elapsed_s
        # Metrics after the outcome, and never at its expense: a failure here loses a count, not a batch.
        try:
            self.store.record_request(config.account_id, str(attempt.status or "error"), attempt.elapsed_s)
        except redis.RedisError as exc:
            log.warning("account %s: request metrics not recorded: %s", config.account_id, where(exc))
        return report

    def _outcome(self, sent: _Sent) -> SendReport:
        """Classify the answer and record what it comes to. A store outage propagates (see _record): it is
        never taken for an internal error, which would record a retry of a batch CleverTap has stored."""
        attempt, records, config = sent.attempt, sent.records, sent.config
        try:
            classified = classify(attempt, records)
            decision = decide(classified, records, sent.history, config.give_up_age, self.rng)
            return self._apply(sent, classified, decision)
        except OUTAGE_ERRORS:
            raise
        except Exception as exc:
            # A response nobody foresaw, or a bug in what follows it: still an attempt, counted like a
            # transient failure, so a batch that keeps failing this way ends in the dead letters.
            log.error("batch %s [%s]: the response could not be processed: %s", sent.batch_id, config.name,
                      where(exc))  # fmt: skip
            decision = after_internal_error(where(exc), records, sent.history, config.give_up_age)
            return self._apply(sent, Classified(Kind.TRANSIENT, decision.reason, attempt.status), decision)

    def _record(self, sent: _Sent, lease_ends: float) -> SendReport:
        """:meth:`_outcome`, tried again on a store outage (capped backoff) until shortly before the batch's
        lease ends. Every step it takes is safe to repeat: a script that ran but whose answer was lost is a
        no-op the second time (the batch's lease and owner say so)."""
        give_up_at = self._record_until(lease_ends)
        delay, tries = RECORD_FIRST_DELAY_S, 0
        while True:
            try:
                report = self._outcome(sent)
                if tries:
                    log.warning(
                        "batch %s [%s]: outcome recorded after the store came back (%d tries)",
                        sent.batch_id, sent.config.name, tries + 1,
                    )  # fmt: skip
                return report
            except OUTAGE_ERRORS as exc:
                tries += 1
                if time.monotonic() + delay >= give_up_at:
                    log.error(
                        "batch %s [%s]: CleverTap answered %s but the store stayed unreachable (%s); the "
                        "outcome is not recorded and the batch goes again when its lease ends",
                        sent.batch_id, sent.config.name, sent.attempt.status or "nothing", where(exc),
                    )  # fmt: skip
                    raise
                if tries == 1:
                    log.warning(
                        "batch %s [%s]: the store is unreachable (%s); recording the outcome again until it "
                        "answers", sent.batch_id, sent.config.name, where(exc),
                    )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, RECORD_MAX_DELAY_S)

    def _give_back(
        self,
        config: IntegrationConfig,
        batch_id: str,
        owner: str,
        token: str | None,
        lease_ends: float,
        error: BaseException,
    ) -> SendReport:
        """Before anything was sent the store went away: once it answers, release the token and make the
        batch due at once (a new generation, dispatched); if it does not answer before the lease would have
        ended anyway, the sweep re-publishes the batch as it does for a killed worker."""
        name = config.name
        log.warning("batch %s [%s]: the store failed before the send (%s); giving it back", batch_id, name,
                    where(error))  # fmt: skip
        give_up_at = self._record_until(lease_ends)
        delay = RECORD_FIRST_DELAY_S
        while True:
            try:
                if token is not None:
                    self.limiter.release(config.account_id, token, config.max_concurrency)
                    token = None
                gen = self.store.unlease(name, batch_id, owner, 0.0)
                break
            except OUTAGE_ERRORS:
                if time.monotonic() + delay >= give_up_at:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, RECORD_MAX_DELAY_S)
        if gen:
            self._quietly(lambda: self.dispatch(name, batch_id, 0.0, gen))
        return SendReport(
            name, batch_id, SendResult.RETRY, detail=f"store failed before the send: {where(error)}"
        )

    def _record_until(self, lease_ends: float) -> float:
        """When to stop trying to record through an outage: shortly before the batch's lease ends (past it
        the sweep may send the batch again), by RECORD_MARGIN_S or a tenth of the lease if that is less."""
        return lease_ends - min(RECORD_MARGIN_S, self.batch_lease_s * 0.1)

    @staticmethod
    def _quietly(step: Callable[[], Any]) -> None:
        """A step whose failure costs nothing that the sweep or a lease does not make good."""
        try:
            step()
        except Exception as exc:
            log.warning("not done (the sweep or a lease's end makes up for it): %s", where(exc))

    def _apply(self, sent: _Sent, c: Classified, d: Decision) -> SendReport:
        """Record what the answer comes to (one script), then dispatch what follows from it."""
        config, batch_id, owner, records = sent.config, sent.batch_id, sent.owner, sent.records
        name = config.name

        def debug(result: SendResult) -> Debug:
            return sent.debugger_entry(result, d.reason)

        if c.kind is Kind.THROTTLED:
            before = self.store.effective_limit(config.account_id, config.max_concurrency)
            after = self.store.adapt_limit(
                config.account_id, config.max_concurrency, throttled=True, in_flight=sent.in_flight
            )
            if int(after) < int(before):
                log.warning(
                    "account %s: a 429 within this pipeline's own limit (another client uses the account): "
                    "effective limit %d of %d", config.account_id, int(after), config.max_concurrency,
                )  # fmt: skip
        if d.action is Action.RETRY:
            assert d.retry_kind is not None
            gen = self.store.retry_later(
                name, batch_id, owner, d.delay_s, d.retry_kind, d.reason, debug(SendResult.RETRY)
            )
            if gen:
                self.dispatch(name, batch_id, d.delay_s, gen)
            return SendReport(
                name, batch_id, SendResult.RETRY, len(records), delay_s=d.delay_s, detail=d.reason
            )
        if d.action is Action.HOLD:
            self.store.hold(
                name, batch_id, owner, d.reason, self.settings.auth_probe_interval, debug(SendResult.HELD)
            )
            log.error("integration %s: sends paused until this is fixed: %s", name, d.reason)
            return SendReport(name, batch_id, SendResult.HELD, len(records), detail=d.reason)
        if d.action is Action.SPLIT:
            halves = self.store.split(name, batch_id, owner, debug(SendResult.SPLIT))
            for bid in halves:
                self.dispatch(name, bid, 0.0, 1)
            self.fill(config)
            return SendReport(name, batch_id, SendResult.SPLIT, len(records), detail=d.reason)
        dead = [api_dead_letter(name, batch_id, r, sent.attempt_no, c.http_status) for r in d.dead]
        codes = Counter(str(r.code) for r in d.dead)
        if d.gave_up:
            result = SendResult.GAVE_UP
        elif c.kind is Kind.BAD_REQUEST:
            result = SendResult.BAD_REQUEST
        elif d.dead:
            result = SendResult.PARTIAL
        else:
            result = SendResult.DELIVERED
        counters = {
            "batches_sent": 1,
            "rejected_api": len(d.dead),
            "rows_unconfirmed": sum(1 for r in d.dead if r.unconfirmed),
            "batches_partial": int(result is SendResult.PARTIAL),
            "batches_given_up": int(result is SendResult.GAVE_UP),
            "batches_bad_request": int(result is SendResult.BAD_REQUEST),
        }
        authenticated = c.http_status is not None and 200 <= c.http_status < 300
        if authenticated:
            self.store.adapt_limit(config.account_id, config.max_concurrency, throttled=False)
        applied, released = self.store.finish(
            name, batch_id, owner, d.delivered, dead, counters, authenticated, debug(result)
        )
        if not applied:
            return SendReport(name, batch_id, SendResult.SKIPPED_FINISHED, len(records))
        for bid, gen in released:
            self.dispatch(name, bid, 0.0, gen)
        self.fill(config)  # a batch is done: the next one goes at once, not at the next assemble tick
        if released:
            log.warning("integration %s: CleverTap accepts the credentials again; released %d held batches",
                        name, len(released))  # fmt: skip
        if c.kind is Kind.REJECTED and "processed" in c.detail:
            log.warning("batch %s [%s]: %s", batch_id, name, c.detail)
        return SendReport(
            name,
            batch_id,
            result,
            len(records),
            d.delivered,
            len(d.dead),
            dict(codes),
            detail="" if result is SendResult.DELIVERED or d.reason == "partial" else d.reason,
        )

    # -------------------------------------------------------------------------------------------- sweep

    def sweep(self) -> dict[str, dict[str, int]]:
        """Re-dispatch open batches nobody holds, start due auth probes, expire stale tokens."""
        found: dict[str, dict[str, int]] = {}
        for name in sorted(self.settings.integrations):
            config = self.settings.integrations[name]
            res = self.store.sweep(
                name,
                self.settings.sweep_grace,
                self.settings.auth_probe_interval,
                config.dead_letter_max_age,
                config.dead_letter_max_count,
                config.anonymous_hold,  # also after anonymous = "hold" is switched off: what was held expires
            )
            for bid, gen in res.redispatch:
                self.dispatch(name, bid, 0.0, gen)
            if res.probe:
                log.info("integration %s: probing with batch %s whether sends work again", name, res.probe[0])
                self.dispatch(name, res.probe[0], 0.0, res.probe[1])
            if res.pending:
                self.store.mark_ready(name)
            found[name] = {
                "open": res.open,
                "held": res.held,
                "pending": res.pending,
                "redispatched": len(res.redispatch),
                "probe": int(bool(res.probe)),
            }
        for account in {c.account_id for c in self.settings.integrations.values()}:
            self.store.expire_tokens(account)
        self.store.forget_unserved()
        return found
