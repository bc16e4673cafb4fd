"""The Prometheus exporter, as a real process scraped over HTTP after a delivery through the emulator."""

from __future__ import annotations

import re
import subprocess
import sys

import requests

from pipeline.local.emulator import Emulator, Faults
from pipeline.store import Store
from tests.helpers import ACC, PASS, ROOT, deliver_through, environment, events, page_events


def value(text: str, metric: str, **labels: str) -> float:
    """The sample of ``metric`` with exactly ``labels`` (in any order) in an exposition ``text``."""
    for line in text.splitlines():
        found = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if (
            found
            and found.group(1) == metric
            and dict(re.findall(r'(\w+)="([^"]*)"', found.group(2))) == labels
        ):
            return float(found.group(3))
    raise AssertionError(f"{metric}{labels} not in\n{text}")


def test_a_scrape_counts_what_the_emulator_stored(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(restricted_events=frozenset({"webpageviewed"}), latency_ms=30)) as emu:
        d = deliver_through(emu.url, redis_url, store, events(40) + page_events(2), CLEVERTAP_BATCH_SIZE="10")
        stored = emu.state.stats()["records_stored"]
    env = environment(None, process=True, credentials=False, **d.env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "metrics", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("metrics on http://127.0.0.1:"), line  # loopback by default
        text = requests.get(line.split(" on ")[1].strip(), timeout=10).text
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    assert value(text, "clevertap_records_delivered_total", integration="default") == stored == 40
    assert value(text, "clevertap_events_ingested_total", integration="default", outcome="accepted") == 42
    assert value(text, "clevertap_dead_letters", integration="default", stage="api", code="513") == 2
    assert value(text, "clevertap_requests_total", account=ACC, status="200") == 5
    assert value(text, "clevertap_request_duration_seconds_count", account=ACC) == 5
    assert value(text, "clevertap_request_duration_seconds_bucket", account=ACC, le="1.0") == 5  # 30 ms each
    assert value(text, "clevertap_request_duration_seconds_bucket", account=ACC, le="+Inf") == 5
    assert value(text, "clevertap_account_limit", account=ACC) == 15
    assert value(text, "clevertap_auth_ok", integration="default") == 1
    assert value(text, "clevertap_records_pending", integration="default") == 0
    assert PASS not in text
