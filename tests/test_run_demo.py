"""`clevertap-pipeline run` and `demo` as real processes: they start everything, stop everything, and a
restart picks up what was in flight."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests

from pipeline.config import load_settings
from pipeline.ingest import ingest
from pipeline.local.emulator import DEMO_ACCOUNT
from pipeline.local.procs import wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.sample import generate
from pipeline.store import Store
from tests.helpers import ROOT, environment

pytestmark = pytest.mark.e2e
DEMO_KEYS = ("CLEVERTAP_ACCOUNT_ID", "CLEVERTAP_PASSCODE")
CREDS = {
    "CLEVERTAP_ACCOUNT_ID": "RUN-ACC",
    "CLEVERTAP_PASSCODE": "run-pass",
    "CLEVERTAP_REGION": "us1",
    "CLEVERTAP_FLUSH_INTERVAL": "0.2",
    "CLEVERTAP_BATCH_SIZE": "100",
}


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


class Run:
    def __init__(self, data_dir: Path, *flags: str, creds: dict[str, str] = CREDS) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--emulator", "--data-dir", str(data_dir), *flags],
            env=environment(None, process=True, credentials=False, **creds),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode()
            self.lines.append(line)
            if line.startswith("running;") or self.proc.poll() is not None:
                break
        text = "".join(self.lines)
        found = re.search(r"REDIS_URL=(\S+)", text)
        emulator = re.search(r"emulator: (\S+)", text)
        assert found and emulator, text
        self.redis_url, self.emulator_url = found.group(1), emulator.group(1)
        self.pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        self.settings = load_settings(
            {"CLEVERTAP_REGION": "eu1", **(creds or dict(zip(DEMO_KEYS, DEMO_ACCOUNT, strict=True))),
             "REDIS_URL": self.redis_url}
        )  # fmt: skip
        self.store = Store.from_url(self.redis_url)

    def stored(self) -> int:
        stats: dict[str, Any] = requests.get(self.emulator_url + "/_emulator/stats", timeout=10).json()
        return int(stats["records_stored"])

    def stop(self) -> int:
        self.store.r.close()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        assert self.proc.stdout is not None
        self.lines += [x.decode() for x in self.proc.stdout.readlines()]
        self.proc.stdout.close()
        return code


def test_run_delivers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    run = Run(tmp_path / "data")
    try:
        assert len(run.pids) == 2  # a worker and beat
        result = ingest(generate(500, seed=1), settings=run.settings, store=run.store)
        assert wait_for(lambda: run.stored() == result.records, 60), "".join(run.lines)
    finally:
        code = run.stop()
    assert code == 0, "".join(run.lines)
    assert "stopped" in run.lines[-1]
    assert all(gone(pid) for pid in run.pids)  # no orphans


def test_run_starts_again_a_worker_or_redis_that_exits_on_its_own(tmp_path: Path) -> None:
    """One Redis restart or a crashed worker must not stop a one-machine pipeline: ``run`` supervises."""
    run = Run(tmp_path / "data")
    try:
        worker_pid = run.pids[0]
        os.kill(worker_pid, signal.SIGKILL)
        assert run.proc.stdout is not None
        line = run.proc.stdout.readline().decode()
        run.lines.append(line)
        assert line.startswith("worker1 exited on its own (status -9); started it again"), line
        with contextlib.suppress(redis.ConnectionError):
            run.store.r.shutdown(nosave=True)  # Redis goes away (its AOF stays)
        line = run.proc.stdout.readline().decode()
        run.lines.append(line)
        assert line.startswith("the embedded Redis exited on its own; started it again"), line
        result = ingest(generate(300, seed=2), settings=run.settings, store=run.store)
        assert wait_for(lambda: run.stored() == result.records, 60), "".join(run.lines)
    finally:
        code = run.stop()
    assert code == 0, "".join(run.lines)


def test_the_lines_run_prints_are_all_another_shell_needs(tmp_path: Path) -> None:
    port = free_port()
    # the emulator's own demo account, and a collector with a made-up write key
    run = Run(tmp_path / "data", "--collect-port", str(port), creds={})
    try:
        exports = [line.strip() for line in run.lines if line.strip().startswith("export ")]
        python = shlex.quote(sys.executable)
        post = (
            "import os, requests; r = requests.post("
            f"'http://127.0.0.1:{port}/v1/track', auth=(os.environ['CLEVERTAP_WRITE_KEY'], ''), timeout=10, "
            "json={'event': 'Signed Up', 'userId': 'sdk-1', 'messageId': 'c-1'}); r.raise_for_status()"
        )
        script = "\n".join(
            [
                *exports,
                f"{python} -c {shlex.quote(post)}",  # an SDK's call through the collector
                f"{python} -m pipeline ingest --json --strict examples/events.jsonl",
            ]
        )
        # or one line: env.sh also puts this installation's commands on PATH
        sourced = subprocess.run(
            [
                "bash",
                "-ec",
                f"source {shlex.quote(str(tmp_path / 'data' / 'env.sh'))}; clevertap-pipeline status --json",
            ],
            env={**environment(None, process=True, credentials=False), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert sourced.returncode == 0, sourced.stderr.decode()
        assert "default" in orjson.loads(sourced.stdout)["integrations"]
        out = subprocess.run(
            ["bash", "-ec", script],
            env=environment(None, process=True, credentials=False),
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()
        accepted = orjson.loads(out.stdout.splitlines()[-1])["accepted"]
        assert accepted > 0
        assert wait_for(lambda: run.stored() >= accepted + 1, 60), "".join(run.lines)
    finally:
        assert run.stop() == 0
    key = (tmp_path / "data" / "write-key").read_text()
    assert key.startswith("wk-") and oct((tmp_path / "data" / "write-key").stat().st_mode)[-3:] == "600"
    console_key = (tmp_path / "data" / "console-key").read_text()
    assert oct((tmp_path / "data" / "console-key").stat().st_mode)[-3:] == "600"
    # the passcode, the write key and the console key are in files, not on the terminal
    printed = "".join(run.lines)
    assert DEMO_ACCOUNT[1] not in printed and key not in printed and console_key not in printed
    assert 'CLEVERTAP_CONSOLE_KEY="$(cat ' in printed


def test_what_was_in_flight_at_shutdown_is_sent_on_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Run(data, "--emulator-flag=--latency-ms=1500")
    try:
        result = ingest(generate(3000, seed=5), settings=first.settings, store=first.store)
        assert wait_for(lambda: first.store.tokens_in_flight("RUN-ACC") > 0, 30)
    finally:
        assert first.stop() == 0
    env_before = (data / "env.sh").read_text()
    second = Run(data)  # the same data dir: Redis comes back from its AOF
    try:
        # the same endpoints: what other shells, a console and saved API URLs point at still answers
        assert (second.redis_url, second.emulator_url) == (first.redis_url, first.emulator_url)
        assert (data / "env.sh").read_text() == env_before
        store = second.store
        assert wait_for(
            lambda: store.depth("default")["pending"] == 0 and store.depth("default")["open_batches"] == 0,
            120,
        ), "".join(second.lines)
    finally:
        assert second.stop() == 0
    records = [orjson.loads(x)["record"] for x in (data / "emulator-records.jsonl").read_text().splitlines()]
    unique = {orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records}
    assert len(unique) == result.records  # every record arrived (a cut-short request may have repeated)


def test_demo_runs_end_to_end_and_accounts_for_every_event() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--events", "1000"],
        env=environment(None, process=True, credentials=False),
        capture_output=True,
        cwd=ROOT,
        timeout=180,
        check=False,
    )
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "Every event is accounted for" in text
    assert "522 x1" in text and "missing identity" in text
    assert re.search(r"highest in flight\s+1[0-5]\b|highest in flight\s+[1-9]\b", text)
    assert "demo-passcode" not in text
