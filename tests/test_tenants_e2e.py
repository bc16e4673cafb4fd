"""Ten accounts on one worker (gevent pool) and one beat, real processes: a trickle is not held up by a
neighbour's million-record backlog, by an account whose API answers in 5 s, or by one that is down; the
send queue stays bounded; the account another client shares adapts its limit. The bounds asserted here are
loose (twice the latency a trickle should see, room for a shared 2-core machine): they catch a trickle held
behind a backlog, not a slow machine; `clevertap-pipeline bench-tenants` measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.local.tenants import BIG, SHARED, run_tenants

pytestmark = [pytest.mark.e2e, pytest.mark.long]  # about 2.5 minutes: make test-long


def test_many_accounts_are_served_in_turn(tmp_path: Path) -> None:
    latency_s, flush_s = 0.5, 1.0
    figures = run_tenants(
        tmp_path, backlog=1_000_000, shared_backlog=400_000, seconds=45, latency_ms=500, trickle_per_s=4
    )
    print(figures.table())
    # A trickle's record waits a flush, a beat tick and its send (the API's latency, twice at worst): that
    # is the p99 it should see beside a backlog, whatever the backlog.
    target = flush_s + 2 * latency_s + 1
    for account in ("T05", "T06", "T07", "T08", "T09", "T10"):
        trickle = figures.accounts[account]
        assert trickle.latencies_ms, figures.table()
        assert trickle.p(0.99) <= 2 * target, figures.table()
    # Bounded dispatch: two integrations an account, each 15 open batches at most (2 x 15 shared by two),
    # so at most 300 send messages whatever the backlog (plus the odd stale copy), not one per batch.
    assert figures.peak_send_queue <= 10 * 2 * 15 + 20, figures.table()
    # The backlog keeps moving beside the slow and the down account.
    assert figures.accounts[BIG].rate >= 0.5 * figures.accounts[BIG].ceiling, figures.table()
    # Another client holds 5 of the shared account's 15 slots: its effective limit came down.
    assert figures.accounts[SHARED].effective_limit < 15, figures.table()
    throttled, requests = figures.throttled_after_warmup.get(SHARED, (0, 1))
    assert throttled <= 0.1 * max(1, requests), figures.table()
