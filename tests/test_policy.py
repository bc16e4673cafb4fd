"""Response classification, row matching, backoff and the retry policy: pure, no Redis, no HTTP."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from pipeline.policy import (
    AUTH_HINT,
    Action,
    Attempt,
    BatchHistory,
    Kind,
    classify,
    decide,
    full_jitter,
    match_rejections,
    parse_retry_after,
)

ROWS = [
    orjson.dumps({"type": "event", "identity": f"u{i}@x.com", "evtName": "E", "evtData": {"i": i}})
    for i in range(5)
]
HOUR_MS = 3_600_000


def body(obj: Any) -> bytes:
    return orjson.dumps(obj)


def history(**over: int) -> BatchHistory:
    base = {
        "now_ms": 10 * HOUR_MS,
        "created_ms": 10 * HOUR_MS,
        "attempts": 0,
        "failures": 0,
        "throttles": 0,
        "first_failure_ms": 0,
    }
    base.update(over)
    return BatchHistory(**base)


@pytest.mark.parametrize(
    ("attempt", "kind"),
    [
        (Attempt(200, body({"status": "success", "processed": 5, "unprocessed": []})), Kind.SUCCESS),
        (Attempt(429, body({"status": "fail", "code": 429})), Kind.THROTTLED),
        (Attempt(401, body({"status": "fail", "error": "Invalid Credentials", "code": 401})), Kind.AUTH),
        (Attempt(403, b""), Kind.AUTH),
        (Attempt(500, b"oops"), Kind.TRANSIENT),
        (Attempt(503, b""), Kind.TRANSIENT),
        (Attempt(502, b""), Kind.TRANSIENT),
        (Attempt(None, error="ReadTimeout"), Kind.TRANSIENT),
        (Attempt(None, error="ConnectionError"), Kind.TRANSIENT),
        (Attempt(200, b"<html>proxy error</html>"), Kind.TRANSIENT),
        (Attempt(400, body({"status": "fail", "error": "Malformed request", "code": 400})), Kind.BAD_REQUEST),
        (Attempt(404, b""), Kind.CONFIG),
        (Attempt(407, b""), Kind.CONFIG),
        (Attempt(308, b"", {"Location": "https://elsewhere.example/1/upload"}), Kind.CONFIG),
        (Attempt(413, b""), Kind.TOO_LARGE),
        (Attempt(422, b""), Kind.BAD_REQUEST),
    ],
)
def test_every_response_class(attempt: Attempt, kind: Kind) -> None:
    assert classify(attempt, ROWS).kind is kind


def test_auth_detail_tells_the_user_what_to_check() -> None:
    c = classify(Attempt(401, body({"status": "fail", "error": "Invalid Credentials", "code": 401})), ROWS)
    assert "Invalid Credentials" in c.detail and AUTH_HINT in c.detail


def test_partial_rows_are_matched_by_record_number() -> None:
    resp = {
        "status": "partial",
        "processed": 3,
        "unprocessed": [
            {
                "status": "fail",
                "code": 509,
                "error": "Event Name is incorrect. ErrorCode: 509 - Event name is mandatory. "
                "Skipped record number : 2",
                "record": {"echo": 1},
            },
            {"status": "fail", "code": 523, "error": "x. Skipped record number : 5", "record": {"echo": 2}},
        ],
    }
    c = classify(Attempt(200, body(resp)), ROWS)
    assert c.kind is Kind.REJECTED and c.api_processed == 3
    assert [(r.row, r.code) for r in c.rejections] == [(1, 509), (4, 523)]
    assert c.rejections[0].record == {"echo": 1}


def test_rows_without_a_record_number_are_matched_by_the_echoed_record() -> None:
    echoed = orjson.loads(ROWS[3])
    rejections = match_rejections([{"code": "512", "error": "Only Items can nest", "record": echoed}], ROWS)
    assert [(r.row, r.code, r.record) for r in rejections] == [(3, 512, echoed)]


def test_unmatched_entries_are_kept_with_their_echoed_record() -> None:
    rejections = match_rejections(
        [{"code": 555, "error": "misc. Skipped record number : 99", "record": {"other": True}}, "garbage"],
        ROWS,
    )
    assert [(r.row, r.code) for r in rejections] == [(None, 555), (None, None)]
    assert rejections[0].record == {"other": True}


def test_duplicate_rows_each_match_a_different_row() -> None:
    same = [ROWS[0], ROWS[0]]
    echoed = orjson.loads(ROWS[0])
    rejections = match_rejections([{"code": 1, "error": "e", "record": echoed}] * 2, same)
    assert [r.row for r in rejections] == [0, 1]


def test_fail_without_details_rejects_every_row() -> None:
    c = classify(
        Attempt(200, body({"status": "fail", "processed": 0, "unprocessed": [], "error": "nope"})), ROWS
    )
    assert c.kind is Kind.REJECTED and len(c.rejections) == 5 and "nope" in c.rejections[0].error


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    c = classify(Attempt(429, b"", {"Retry-After": "7"}), ROWS)
    assert c.retry_after == 7.0


def test_full_jitter_stays_within_its_bounds() -> None:
    rng = random.Random(1)
    draws = [full_jitter(3, 1.0, 300.0, rng) for _ in range(500)]
    assert min(draws) >= 0 and max(draws) <= 8.0 and max(draws) > 6.0
    assert max(full_jitter(50, 1.0, 300.0, rng) for _ in range(200)) <= 300.0


def test_success_finishes_with_every_row_delivered() -> None:
    d = decide(
        classify(Attempt(200, body({"status": "success"})), ROWS), ROWS, history(), 3600, random.Random(0)
    )
    assert (d.action, d.delivered, d.dead) == (Action.FINISH, 5, ())


def test_partial_delivers_the_accepted_rows_and_dead_letters_only_the_rejected_ones() -> None:
    resp = {
        "status": "partial",
        "processed": 4,
        "unprocessed": [{"code": 509, "error": "Skipped record number : 1"}],
    }
    d = decide(classify(Attempt(200, body(resp)), ROWS), ROWS, history(), 3600, random.Random(0))
    assert d.action is Action.FINISH and d.delivered == 4
    assert [(r.row, r.code) for r in d.dead] == [(0, 509)]
    assert d.dead[0].record == orjson.loads(ROWS[0])  # nothing echoed: the row sent is kept


def test_throttling_retries_and_never_uses_up_the_failure_budget() -> None:
    c = classify(Attempt(429, b""), ROWS)
    old = history(created_ms=0, throttles=40)  # ten hours of throttling
    d = decide(c, ROWS, old, 3600, random.Random(0))
    assert d.action is Action.RETRY and d.retry_kind == "throttles" and 0 <= d.delay_s <= 30
    honoured = decide(
        classify(Attempt(429, b"", {"Retry-After": "12"}), ROWS), ROWS, old, 3600, random.Random(0)
    )
    assert 12 <= honoured.delay_s <= 30  # Retry-After is a floor; the backoff still grows


def test_transient_failures_retry_with_backoff_until_the_give_up_age() -> None:
    c = classify(Attempt(503, b""), ROWS)
    young = decide(
        c, ROWS, history(failures=2, first_failure_ms=10 * HOUR_MS - 60_000), 3600, random.Random(0)
    )
    assert young.action is Action.RETRY and young.retry_kind == "failures" and young.delay_s <= 4
    old = decide(
        c, ROWS, history(failures=9, first_failure_ms=10 * HOUR_MS - HOUR_MS), 3600, random.Random(0)
    )
    assert old.action is Action.FINISH and old.gave_up and old.delivered == 0
    assert len(old.dead) == 5 and "HTTP 503" in old.dead[0].error and "gave up after 10" in old.dead[0].error


def test_countdowns_stay_below_the_visibility_timeout() -> None:
    from pipeline import constants as C

    c = classify(Attempt(429, b"", {"Retry-After": "99999"}), ROWS)
    assert (
        decide(c, ROWS, history(), 3600, random.Random(0)).delay_s
        == C.MAX_COUNTDOWN_S
        < C.VISIBILITY_TIMEOUT_S
    )


def test_auth_holds_and_bad_requests_dead_letter_every_row() -> None:
    held = decide(classify(Attempt(401, b""), ROWS), ROWS, history(), 3600, random.Random(0))
    assert held.action is Action.HOLD and held.dead == ()
    bad = decide(
        classify(Attempt(400, body({"error": "Malformed request"})), ROWS),
        ROWS,
        history(),
        3600,
        random.Random(0),
    )
    assert bad.action is Action.FINISH and len(bad.dead) == 5 and bad.dead[0].code == 400


def test_throttling_has_a_clock_of_its_own_so_nothing_retries_forever() -> None:
    c = classify(Attempt(429, b""), ROWS)
    recent = decide(
        c, ROWS, history(throttles=30, first_throttle_ms=10 * HOUR_MS - 60_000), 3600, random.Random(0)
    )
    assert recent.action is Action.RETRY
    # Throttled since an hour ago with a one-hour give-up age: dead-lettered with the reason.
    stuck = decide(c, ROWS, history(throttles=300, first_throttle_ms=9 * HOUR_MS), 3600, random.Random(0))
    assert stuck.action is Action.FINISH and stuck.gave_up and len(stuck.dead) == 5
    assert "throttled 301 times" in stuck.dead[0].error
    # Failures and throttles keep separate clocks: a long throttle does not shorten the failure budget.
    fail = decide(
        classify(Attempt(503, b""), ROWS),
        ROWS,
        history(first_throttle_ms=9 * HOUR_MS, first_failure_ms=10 * HOUR_MS - 1000),
        3600,
        random.Random(0),
    )
    assert fail.action is Action.RETRY
