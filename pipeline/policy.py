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
from urllib.parse import urlsplit

import orjson

from pipeline import constants as C

AUTH_HINT = "check account id, passcode and region: a wrong region looks like bad credentials"
TRANSIENT_STATUSES = frozenset({408, 425, 500, 502, 503, 504, 520, 521, 522, 523, 524})
AUTH_STATUSES = frozenset({401, 403})
THROTTLE_STATUSES = frozenset({429})
#: Answers that say the configuration is wrong, not the data: a redirect (the passcode must never follow
#: it to another host), a wrong api_url (404), a proxy that wants credentials (407). Held, like a 401.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CONFIG_STATUSES = REDIRECT_STATUSES | {404, 407}
TOO_LARGE_STATUSES = frozenset({413})

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
    CONFIG = "config"  # a redirect, 404 or 407: held like auth, with a reason naming what to fix
    TOO_LARGE = "too_large"  # 413: the batch is split in two
    BAD_REQUEST = "bad_request"


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt, as the client saw it: a status and body, or the error that stopped it."""

    status: int | None
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    error: str | None = None
    elapsed_s: float = 0.0
    # the client cut the request after sending it (a read timeout, or the whole-request deadline): the
    # server may still count it in flight
    cut: bool = False


@dataclass(frozen=True)
class RowRejection:
    row: int | None  # 0-based index in the batch; None when the entry could not be matched to a row
    code: int | None
    error: str
    record: Any  # the record CleverTap echoed (or the row sent, when matched and nothing was echoed)
    unconfirmed: bool = False  # CleverTap's answer cannot tell whether this row was stored


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
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; one without a zone is read as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _code(raw: Any) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def match_rejections(unprocessed: Sequence[Any], sent: Sequence[bytes]) -> tuple[RowRejection, ...]:
    """Match each ``unprocessed`` entry to a sent row: by "Skipped record number : N" (1-based), else by the
    echoed record. A second entry naming a row already matched is the same refusal said twice and is
    dropped; an entry matching no row is kept with its echoed record and ``row=None``."""
    used: set[int] = set()
    decoded: list[Any] | None = None
    out = []
    for entry in unprocessed:
        if not isinstance(entry, dict):
            out.append(RowRejection(None, None, f"unreadable unprocessed entry: {str(entry)[:200]}", entry))
            continue
        error = str(entry.get("error") or "rejected without a message")
        code = _code(entry.get("code"))
        echoed = entry.get("record")
        row: int | None = None
        found = _RECORD_NUMBER.search(error)
        if found:
            index = int(found.group(1)) - 1
            if index in used:
                continue  # the same row named again
            if 0 <= index < len(sent):
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


def reconcile(
    status: str, processed: int | None, unprocessed: Sequence[Any], sent: Sequence[bytes], message: str = ""
) -> tuple[tuple[RowRejection, ...], str]:
    """Every sent row ends up once: delivered, or dead-lettered. Returns the dead rows (one per row, in row
    order) and a note for the log when CleverTap's answer did not add up.

    A row is delivered only when the answer proves it: the refused rows are listed and ``processed`` counts
    exactly the others (or, without ``processed``, a ``partial`` lists every refused row). ``fail`` with
    ``processed`` 0 stored nothing: rows it did not list are dead letters saying so. Any other disagreement
    (refusals that name no row sent, a count that does not match) leaves the unlisted rows *unconfirmed*:
    dead letters whose reason says they may have been stored, so a replay is the operator's choice."""
    listed = match_rejections(unprocessed, sent)
    refused = {r.row: r for r in listed if r.row is not None}
    orphans = [r for r in listed if r.row is None]
    rest = [i for i in range(len(sent)) if i not in refused]
    n = len(sent)
    if processed is None:
        processed = 0 if status == "fail" else len(rest) - len(orphans)
    note = ""
    if processed == len(rest) and not orphans:
        extra: list[RowRejection] = []
    elif processed == 0:
        why = f"not stored: CleverTap answered {status} with processed 0 and did not list this row"
        if message:
            why += f" ({message})"
        extra = [RowRejection(i, None, why, orjson.loads(sent[i])) for i in rest]
    else:
        note = (
            f"CleverTap answered {status}, processed {processed} of {n}, listing {len(listed)} refusals "
            f"({len(orphans)} naming no row sent)"
        )
        why = f"unconfirmed: {note}; this row may have been stored, and replaying it may store it twice"
        if orphans:
            why += f"; first unmatched refusal: {orphans[0].error[:200]}"
        extra = [RowRejection(i, None, why, orjson.loads(sent[i]), unconfirmed=True) for i in rest]
    if orphans and not note:  # counts only: an entry's text can echo a record, and the note is logged
        note = f"{len(orphans)} refusal(s) named no row sent and were dropped"
    dead = sorted([*refused.values(), *extra], key=lambda r: r.row if r.row is not None else -1)
    return tuple(dead), note


def _location_host(headers: Mapping[str, str]) -> str:
    location = headers.get("location", "")
    return urlsplit(location).netloc or location[:100] or "nowhere (no Location header)"


def classify(attempt: Attempt, sent: Sequence[bytes]) -> Classified:
    status = attempt.status
    if status is None:
        return Classified(Kind.TRANSIENT, f"network: {attempt.error or 'no response'}")
    headers = {k.lower(): v for k, v in (attempt.headers or {}).items()}
    try:
        body = orjson.loads(attempt.body) if attempt.body else None
    except orjson.JSONDecodeError:
        body = None
    message = str(body.get("error", ""))[:300] if isinstance(body, dict) else ""
    if status in THROTTLE_STATUSES:
        return Classified(
            Kind.THROTTLED,
            f"HTTP 429 {message}".strip(),
            status,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )
    if status in AUTH_STATUSES:
        return Classified(Kind.AUTH, f"HTTP {status} {message or 'Unauthorized'}: {AUTH_HINT}", status)
    if status in REDIRECT_STATUSES:
        return Classified(
            Kind.CONFIG,
            f"HTTP {status} redirect to {_location_host(headers)}: not followed "
            "(the passcode would go along); check api_url and region",
            status,
        )
    if status in CONFIG_STATUSES:
        hint = "check api_url" if status == 404 else "the proxy wants credentials: check HTTPS_PROXY"
        return Classified(Kind.CONFIG, f"HTTP {status} {message or 'refused'}: {hint}", status)
    if status in TOO_LARGE_STATUSES:
        return Classified(Kind.TOO_LARGE, f"HTTP 413 {message or 'request too large'}", status)
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
    raw_processed = body.get("processed")
    processed = raw_processed if type(raw_processed) is int and 0 <= raw_processed <= len(sent) else None
    unprocessed = body.get("unprocessed") or []
    if not isinstance(unprocessed, list):
        unprocessed = [unprocessed]
    if body["status"] == "success" and not unprocessed:
        return Classified(Kind.SUCCESS, "success", status, api_processed=processed)
    dead, note = reconcile(str(body["status"]), processed, unprocessed, sent, message)
    if not dead:
        return Classified(Kind.SUCCESS, note or "success", status, api_processed=processed)
    detail = str(body["status"]) + (f": {note}" if note else "")
    return Classified(Kind.REJECTED, detail, status, dead, api_processed=processed)


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
    SPLIT = "split"  # too large for CleverTap: two batches of half the records each


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
    if c.kind in (Kind.AUTH, Kind.CONFIG):
        return Decision(Action.HOLD, reason=c.detail)
    if c.kind is Kind.TOO_LARGE:
        if len(sent) > 1:
            return Decision(Action.SPLIT, reason=c.detail)
        return Decision(
            Action.FINISH, dead=_all_rows(sent, c.http_status, f"{c.detail}, even alone"), reason=c.detail
        )
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
        # Retry-After is a floor, not the whole answer: "0" (or a short one) every time must not turn into
        # a hot loop, so the backoff still grows with the throttles.
        delay = max(
            c.retry_after or 0.0, full_jitter(history.throttles, THROTTLE_BASE_S, THROTTLE_CAP_S, rng)
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


def after_internal_error(
    error: str, sent: Sequence[bytes], history: BatchHistory, give_up_age_s: float
) -> Decision:
    """What to do when a response could not be processed at all (a bug, a response nobody foresaw): a
    failed attempt like any transient one, so the batch backs off and, failing for ``give_up_age_s``, ends
    in the dead letters instead of looping for ever. Plain arithmetic only: this must not fail too."""
    reason = f"the response could not be processed ({error}); the rows may have been stored"
    first = history.first_failure_ms or history.now_ms
    if history.now_ms - first >= give_up_age_s * 1000:
        return Decision(Action.FINISH, dead=_all_rows(sent, None, reason), reason=reason, gave_up=True)
    delay = min(TRANSIENT_CAP_S, TRANSIENT_BASE_S * 2 ** min(history.failures, 8))
    return Decision(Action.RETRY, delay_s=delay, retry_kind=RetryKind.FAILURES, reason=reason)


def _all_rows(sent: Sequence[bytes], status: int | None, error: str) -> tuple[RowRejection, ...]:
    return tuple(RowRejection(i, status, error, orjson.loads(r)) for i, r in enumerate(sent))
