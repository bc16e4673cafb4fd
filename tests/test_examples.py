"""The upstream-trigger examples in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline.local.procs import ProcessGroup, wait_for, worker_command
from pipeline.store import Store
from tests.helpers import ROOT, environment

EVENTS = ROOT / "examples" / "events.jsonl"


def env_for(redis_url: str) -> dict[str, str]:
    env = environment(redis_url, process=True, CLEVERTAP_CONSENT_CATEGORIES="marketing")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def test_python_api_example(redis_url: str, store: Store) -> None:
    out = subprocess.run(
        [sys.executable, "examples/trigger_python.py", str(EVENTS)],
        env=env_for(redis_url),
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == {
        "accepted": 3, "filtered": 0, "duplicate": 0, "rejected": 0, "fields_dropped": 0, "held": 0,
    }  # fmt: skip
    assert store.r.llen(store.key("default", "pending")) == 3


def test_shell_example(redis_url: str, store: Store) -> None:
    out = subprocess.run(
        ["bash", "examples/trigger_shell.sh", str(EVENTS)],
        env=env_for(redis_url),
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    expected = b"clevertap ingest: " + (
        b'{"accepted":3,"filtered":0,"duplicate":0,"rejected":0,"fields_dropped":0,"held":0}'
    )
    assert expected in out.stdout


def test_shell_example_keeps_its_summary_when_events_are_rejected(redis_url: str, store: Store) -> None:
    out = subprocess.run(
        ["bash", "examples/trigger_shell.sh", str(ROOT / "examples" / "tour.jsonl")],
        env=env_for(redis_url),
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out.stderr  # --strict: the step fails ...
    summary = (
        out.stdout.decode().strip().splitlines()[-1]
    )  # ... and the summary is still there for later steps
    assert (
        summary.startswith("clevertap ingest: {")
        and orjson.loads(summary.partition(": ")[2])["rejected"] == 3
    )


@pytest.mark.e2e
def test_celery_example_from_another_service(redis_url: str, store: Store, tmp_path: Path) -> None:
    env = env_for(redis_url)
    group = ProcessGroup()
    try:
        group.start("worker", worker_command("ex", concurrency=2), env, tmp_path / "worker.log")
        out = subprocess.run(
            [sys.executable, "examples/trigger_celery.py", str(EVENTS)],
            env=env,
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert wait_for(lambda: store.r.llen(store.key("default", "pending")) == 3, 60, group=group)
    finally:
        group.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "clevertap.ingest" in log and "jane.doe@example.com" not in log
