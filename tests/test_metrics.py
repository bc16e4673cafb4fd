"""The Prometheus exporter, as a real process scraped over HTTP after a delivery through the emulator."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import orjson
import requests

from pipeline.local.emulator import Emulator, Faults
from pipeline.store import Store
from tests.helpers import ACC, PASS, ROOT, deliver_through, environment, events, page_events, run_cli


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


def test_status_watch_refreshes_with_the_delivery_rate(redis_url: str, store: Store) -> None:
    env = environment(redis_url, process=True)
    stop = threading.Event()

    def deliver() -> None:  # 100 records every 0.1 s, as the finish script counts them: about 1,000/s
        while not stop.wait(0.1):
            store.incr("default", "delivered", 100)

    feeder = threading.Thread(target=deliver)
    feeder.start()
    try:
        watched = run_cli("status", "--watch", "--json", "--interval", "0.5", "--count", "4", env=env)
        text = run_cli("status", "--watch", "--interval", "0.3", "--count", "2", env=env)
    finally:
        stop.set()
        feeder.join()
    assert watched.returncode == 0, watched.stderr
    rates = [
        orjson.loads(line)["integrations"]["default"]["delivered_per_s"]
        for line in watched.stdout.splitlines()
    ]
    assert rates[0] is None and len(rates) == 4
    # The feeder adds at most 100 every 0.1 s (1,000/s; a little more when a wait runs short), so any rate
    # is above 0 and well under 1,500/s, however loaded the machine.
    assert all(0 < r < 1500 for r in rates[1:]), rates
    blocks = text.stdout.decode().split("integration default")
    assert "delivering ... (measuring)" in blocks[1] and re.search(r"delivering [\d,.]+ records/s", blocks[2])
    bad = run_cli("status", "--watch", "--interval", "0", env=env)
    assert bad.returncode == 1 and b"--interval must be above 0" in bad.stderr


def _names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by ``{``, ``[`` or ``)`` and not
    functions, keywords or label names."""
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b\s*(?=[{\[)])", expr))
    return {w for w in words if w.startswith("clevertap_") or w == "up"}


def test_the_alert_rules_and_dashboard_name_only_what_the_exporter_serves(
    redis_url: str, store: Store
) -> None:
    import yaml
    from prometheus_client import CollectorRegistry, generate_latest

    from pipeline.config import load_settings
    from pipeline.metrics import RedisCollector

    store.record_request("TEST-ACC-1", "200", 0.2)
    registry = CollectorRegistry()
    registry.register(RedisCollector(load_settings(environment(redis_url)), store))
    exposition = generate_latest(registry).decode()
    served = set()
    suffixes = {"counter": [""], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    for name, kind in re.findall(r"^# TYPE (clevertap_\w+) (\w+)$", exposition, re.MULTILINE):
        served |= {name + suffix for suffix in suffixes[kind]}
    assert {"clevertap_records_dead_lettered_total", "clevertap_request_duration_seconds_bucket"} <= served
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    assert {
        "ClevertapBacklogAge",
        "ClevertapAuthFailing",
        "ClevertapDeadLetterRate",
        "ClevertapThrottled",
    } <= alerts
    exprs = [r["expr"] for r in rules]
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    dashboard = orjson.loads((ROOT / "deploy/grafana/dashboards/clevertap-pipeline.json").read_bytes())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = set().union(*(_names_in(e) for e in exprs)) - {"up"}
    assert named and named <= served, named - served
    assert len(dashboard["panels"]) >= 10 and len({p["id"] for p in dashboard["panels"]}) == len(
        dashboard["panels"]
    )
