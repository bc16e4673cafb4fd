"""Imports with real celery worker and beat processes and the emulator over HTTP: an `import` CLI process
SIGKILLed at a random point and run again delivers every row exactly once, while a live trickle for the
same account is delivered as it comes (not after the import); bad rows are named by line and column."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.ingest import ingest
from pipeline.local.procs import wait_for
from pipeline.local.runner import start_stack
from pipeline.store import Store
from tests.helpers import ROOT, emulator_records, environment, run_cli

pytestmark = pytest.mark.e2e
ACC, PASS = "IMP-E2E", "imp-e2e-pass"
ROWS = 30_000


def _csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("email,ts,order_id,amount\n")
        for i in range(rows):
            f.write(f"o{i}@x.com,{1_700_000_000 + i},O-{i},{i % 90}.25\n")
        f.write("bad@x.com,yesterday,O-bad,1\n")  # line ROWS + 2: a ts that is no time


def test_import_killed_and_run_again_delivers_every_row_once(
    redis_url: str, store: Store, tmp_path: Path
) -> None:
    env = environment(
        redis_url,
        process=True,
        CLEVERTAP_ACCOUNT_ID=ACC,
        CLEVERTAP_PASSCODE=PASS,
        CLEVERTAP_FLUSH_INTERVAL="0.2",
        CLEVERTAP_BATCH_SIZE="500",
        CLEVERTAP_MAX_CONCURRENCY="4",
        CLEVERTAP_IMPORT_WINDOW="5000",
    )
    stack = start_stack(tmp_path, base_env=env, emulator_flags=("--latency-ms", "100"))
    try:
        emulator = stack.emulator
        assert emulator is not None
        path = tmp_path / "orders.csv"
        _csv(path, ROWS)
        args = [
            sys.executable,
            "-m",
            "pipeline",
            "import",
            str(path),
            "--type",
            "event",
            "--event",
            "Charged",
        ]
        first = subprocess.Popen(
            args, env=stack.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        # killed at a random point once it has queued something (the window holds it back meanwhile)
        assert wait_for(lambda: any(i.number("queued") for i in store.imports("default")), 60, 0.05), (
            stack.logs()
        )
        time.sleep(random.uniform(0.0, 1.5))
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)  # reaped, its pipes closed
        info = store.imports("default")[0]
        assert info.state == "running" and 0 < info.number("rows") < ROWS + 1, info.fields
        # a live trickle for the same account meanwhile: each event is delivered while the import still runs
        live = [{"type": "track", "event": "Live Ping", "userId": f"live{i}", "messageId": f"live-{i}",
                 "context": {"traits": {"email": f"live{i}@x.com"}}} for i in range(5)]  # fmt: skip
        again = subprocess.Popen([*args, "--json"], env=stack.env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)  # fmt: skip
        ingest(live, settings=stack.settings, store=store)

        def live_delivered() -> bool:
            return len([r for r in emulator_records(emulator.url, ACC) if r["evtName"] == "Live Ping"]) == 5

        assert wait_for(live_delivered, 60, 0.1, stack.group), stack.logs()
        status = store.import_info("default", info.id)  # the trickle was delivered while the import ran
        assert status is not None
        assert status.state in ("running", "read"), status.fields
        out, errs = again.communicate(timeout=300)
        assert again.returncode == 0, errs.decode()
        assert f"resuming after row {info.number('rows'):,}".encode() in errs
        assert f"line {ROWS + 2}, column 'ts'".encode() in errs  # the bad row, named
        summary = orjson.loads(out.splitlines()[-1])
        assert summary["rows"] == ROWS + 1 and summary["refused"] == 1

        def delivered() -> bool:
            i = store.import_info("default", info.id)
            return i is not None and i.state == "done"

        assert wait_for(delivered, 240, 0.5, stack.group), (
            store.import_info("default", info.id),
            stack.logs(),
        )
        charged = [r["identity"] for r in emulator_records(emulator.url, ACC) if r["evtName"] == "Charged"]
        assert len(charged) == ROWS and len(set(charged)) == ROWS
        shown = run_cli("import", "status", "--json", env=stack.env)
        row: Any = orjson.loads(shown.stdout)[0]
        assert row["state"] == "done" and row["delivered"] == ROWS and row["in_redis"] == 0
        assert store.stats("default").get("backfill_batches", 0) >= ROWS // 500
        # the same command again: done already, nothing queued twice
        done = run_cli("import", str(path), "--type", "event", "--event", "Charged", env=stack.env)
        assert done.returncode == 0 and b"queued already" in done.stderr
    finally:
        stack.stop()
