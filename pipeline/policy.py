"""What a response means and what to do about it: pure functions over plain data.

``classify`` turns one HTTP attempt into a :class:`Classified` (success, per-row rejections, throttled,
transient, auth, bad request), matching each ``unprocessed`` entry to the row that was sent. ``decide``
turns that, with the batch's history, into a :class:`Decision` (finish, retry after a delay, hold). The
retry policy is data: the status sets below and the backoff constants.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from pipeline import constants as C

AUTH_HINT = "check account id, passcode and region: a wrong region looks like bad credentials"
TRANSIENT_STATUSES = frozenset({408, 425, 500, 502, 503, 504, 520, 521, 522, 523, 524})
AUTH_STATUSES = frozenset({401, 403})
THROTTLE_STATUSES = frozenset({429})

#: Backoff for transient failures: full jitter over base * 2^n, capped (AWS "Exponential Backoff And
#: Jitter"). The cap keeps every countdown far below the broker's visibility timeout.
TRANSIENT_BASE_S, TRANSIENT_CAP_S = 1.0, 300.0
#: Throttling clears as soon as other requests finish, so it backs off faster and less far.
THROTTLE_BASE_S, THROTTLE_CAP_S = 0.5, 30.0

_RECORD_NUMBER = re.compile(r"Skipped record number\s*:\s*(\d+)")


class Kind(enum.StrEnum):
    SUCCESS = "success"
    REJECTED = "rejected"  # 200 with status partial/fail: some or all rows refused
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt, as the client saw it: a status and body, or the error that stopped it."""

    status: int | None
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    error: str | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class RowRejection:
    row: int | None  # 0-based index in the batch; None when the entry could not be matched to a row
    code: int | None
    error: str
    record: Any  # the record CleverTap echoed (or the row sent, when matched and nothing was echoed)


@dataclass(frozen=True)
class Classified:
    kind: Kind
    detail: str  # short and safe to log: no records, no secrets
    http_status: int | None = None
    rejections: tuple[RowRejection, ...] = ()
    retry_after: float | None = None
    api_processed: int | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def match_rejections(unprocessed: Sequence[Any], sent: Sequence[bytes]) -> tuple[RowRejection, ...]:
    """Match each ``unprocessed`` entry to a sent row: by "Skipped record number : N" (1-based), else by the
    echoed record; an entry matching neither is kept with its echoed record and ``row=None``."""
    used: set[int] = set()
    decoded: list[Any] | None = None
    out = []
    for entry in unprocessed:
        if not isinstance(entry, dict):
            out.append(RowRejection(None, None, f"unreadable unprocessed entry: {str(entry)[:200]}", entry))
            continue
        error = str(entry.get("error") or "rejected without a message")
        raw_code = entry.get("code")
        code = (
            int(raw_code)
            if isinstance(raw_code, int) or (isinstance(raw_code, str) and raw_code.isdigit())
            else None
        )
        echoed = entry.get("record")
        row: int | None = None
        found = _RECORD_NUMBER.search(error)
        if found:
            index = int(found.group(1)) - 1
            if 0 <= index < len(sent) and index not in used:
                row = index
        if row is None and echoed is not None:
            if decoded is None:
                decoded = [orjson.loads(r) for r in sent]
            row = next((i for i, rec in enumerate(decoded) if i not in used and rec == echoed), None)
        if row is not None:
            used.add(row)
            if echoed is None:
                echoed = orjson.loads(sent[row])
        out.append(RowRejection(row, code, error, echoed))
    return tuple(out)


def classify(attempt: Attempt, sent: Sequence[bytes]) -> Classified:
    status = attempt.status
    if status is None:
        return Classified(Kind.TRANSIENT, f"network: {attempt.error or 'no response'}")
    headers = {k.lower(): v for k, v in (attempt.headers or {}).items()}
    try:
        body = orjson.loads(attempt.body) if attempt.body else None
    except orjson.JSONDecodeError:
        body = None
    message = str(body.get("error", "")) if isinstance(body, dict) else ""
    if status in THROTTLE_STATUSES:
        return Classified(
            Kind.THROTTLED,
            f"HTTP 429 {message}".strip(),
            status,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )
    if status in AUTH_STATUSES:
        return Classified(Kind.AUTH, f"HTTP {status} {message or 'Unauthorized'}: {AUTH_HINT}", status)
    if status in TRANSIENT_STATUSES or status >= 500:
        return Classified(
            Kind.TRANSIENT,
            f"HTTP {status} {message}".strip(),
            status,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )
    if not 200 <= status < 300:
        return Classified(Kind.BAD_REQUEST, f"HTTP {status} {message or 'request refused'}", status)
    if not isinstance(body, dict) or body.get("status") not in ("success", "partial", "fail"):
        # Stored or not? Unknown. Sending again risks a duplicate; not sending risks a loss. Nothing is lost.
        return Classified(Kind.TRANSIENT, f"HTTP {status} with an unreadable body", status)
    processed = body.get("processed") if isinstance(body.get("processed"), int) else None
    unprocessed = body.get("unprocessed") or []
    if not isinstance(unprocessed, list):
        unprocessed = [unprocessed]
    if body["status"] == "success" and not unprocessed:
        return Classified(Kind.SUCCESS, "success", status, api_processed=processed)
    rejections = match_rejections(unprocessed, sent)
    if not rejections:  # "fail" with no details: every row is refused, with what CleverTap said
        why = f"CleverTap answered {body['status']} without details{': ' + message if message else ''}"
        rejections = tuple(RowRejection(i, None, why, orjson.loads(r)) for i, r in enumerate(sent))
    return Classified(Kind.REJECTED, str(body["status"]), status, rejections, api_processed=processed)


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """A delay drawn uniformly from [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class RetryKind(enum.StrEnum):
    """Which budget a retry counts against: each has a clock of its own from its first occurrence."""

    FAILURES = "failures"  # 5xx, network errors: dead-lettered give_up_age after the first
    THROTTLES = "throttles"  # 429: never uses up the failure budget, but does not retry for ever either


class Action(enum.StrEnum):
    FINISH = "finish"  # remove the batch: count delivered rows, dead-letter the rest
    RETRY = "retry"
    HOLD = "hold"


@dataclass(frozen=True)
class BatchHistory:
    now_ms: int
    created_ms: int
    attempts: int  # sends made before this one
    failures: int  # transient failures before this one
    throttles: int
    first_failure_ms: int  # 0 when none yet
    first_throttle_ms: int = 0  # 0 when none yet


@dataclass(frozen=True)
class Decision:
    action: Action
    delivered: int = 0
    dead: tuple[RowRejection, ...] = ()
    delay_s: float = 0.0
    retry_kind: RetryKind | None = None
    reason: str = ""
    gave_up: bool = False


def decide(
    c: Classified, sent: Sequence[bytes], history: BatchHistory, give_up_age_s: float, rng: random.Random
) -> Decision:
    """The policy table. Throttling never uses up the failure budget; transient failures do, counted from
    the batch's first failure, and after ``give_up_age_s`` its rows are dead-lettered with the last error.
    Throttling has a clock of its own, so nothing retries forever: a batch still throttled ``give_up_age_s``
    after its first 429 (another client saturating the account all that time) is dead-lettered too."""
    if c.kind is Kind.SUCCESS:
        return Decision(Action.FINISH, delivered=len(sent))
    if c.kind is Kind.REJECTED:
        return Decision(
            Action.FINISH, delivered=len(sent) - len(c.rejections), dead=c.rejections, reason=c.detail
        )
    if c.kind is Kind.AUTH:
        return Decision(Action.HOLD, reason=c.detail)
    if c.kind is Kind.BAD_REQUEST:
        return Decision(Action.FINISH, dead=_all_rows(sent, c.http_status, c.detail), reason=c.detail)
    if c.kind is Kind.THROTTLED:
        if history.first_throttle_ms and history.now_ms - history.first_throttle_ms >= give_up_age_s * 1000:
            reason = (
                f"gave up after being throttled {history.throttles + 1} times over "
                f"{(history.now_ms - history.first_throttle_ms) / 1000:.0f} s; last answer: {c.detail}"
            )
            return Decision(
                Action.FINISH, dead=_all_rows(sent, c.http_status, reason), reason=reason, gave_up=True
            )
        delay = (
            c.retry_after
            if c.retry_after is not None
            else full_jitter(history.throttles, THROTTLE_BASE_S, THROTTLE_CAP_S, rng)
        )
        return Decision(
            Action.RETRY,
            delay_s=min(delay, C.MAX_COUNTDOWN_S),
            retry_kind=RetryKind.THROTTLES,
            reason=c.detail,
        )
    first = history.first_failure_ms or history.now_ms
    if history.now_ms - first >= give_up_age_s * 1000:
        reason = (
            f"gave up after {history.failures + 1} failed attempts over "
            f"{(history.now_ms - first) / 1000:.0f} s; last error: {c.detail}"
        )
        return Decision(
            Action.FINISH, dead=_all_rows(sent, c.http_status, reason), reason=reason, gave_up=True
        )
    delay = full_jitter(history.failures, TRANSIENT_BASE_S, TRANSIENT_CAP_S, rng)
    if c.retry_after is not None:
        delay = max(delay, c.retry_after)
    return Decision(
        Action.RETRY, delay_s=min(delay, C.MAX_COUNTDOWN_S), retry_kind=RetryKind.FAILURES, reason=c.detail
    )


def _all_rows(sent: Sequence[bytes], status: int | None, error: str) -> tuple[RowRejection, ...]:
    return tuple(RowRejection(i, status, error, orjson.loads(r)) for i, r in enumerate(sent))
