"""What an operator sees of a real run: Flower (a real Flower process, basic auth, over its HTTP API) and the
workers' JSON log lines, against real celery worker and beat processes and the emulator."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from pipeline.ingest import ingest
from pipeline.local.procs import wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.runner import start_stack
from pipeline.store import Store
from tests.helpers import emulator_records, environment, events, page_events

pytestmark = pytest.mark.e2e
ACC, PASS = "OPS-ACC", "ops-pass"
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-Pa55"
SECRET = "private.person@example.com"


def test_flower_and_json_logs_show_each_batch_outcome(redis_url: str, store: Store, tmp_path: Path) -> None:
    env = environment(
        redis_url,
        process=True,
        CLEVERTAP_ACCOUNT_ID=ACC,
        CLEVERTAP_PASSCODE=PASS,
        CLEVERTAP_BATCH_SIZE="20",
        CLEVERTAP_LOG_FORMAT="json",
    )
    stack = start_stack(
        tmp_path, base_env=env, emulator_flags=("--restricted-event", "Web Page Viewed"), workers=1
    )
    try:
        port = free_port()
        stack.group.start(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            # The password goes by environment, not argv (ps shows argv).
            {**stack.env, "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"},
            tmp_path / "flower.log",
        )
        api = f"http://127.0.0.1:{port}/api/tasks"
        auth = (FLOWER_USER, FLOWER_PASSWORD)

        def flower_tasks() -> dict[str, Any]:
            try:
                answer = requests.get(api, auth=auth, timeout=5)
            except requests.ConnectionError:
                return {}
            return answer.json() if answer.status_code == 200 else {}

        # Flower switches task events on in the workers when it starts; beat's assemble runs show it has.
        assert wait_for(lambda: any(flower_tasks()), 60, 0.5, stack.group), stack.logs()
        # 40 product views (two clean batches), then a batch of 10 views and 10 page views: CleverTap
        # refuses the page views (restricted event, 513), so that batch is partial.
        ingest(events(50) + page_events(10), settings=stack.settings, store=store)

        def sends() -> list[dict[str, Any]]:
            return [t for t in flower_tasks().values() if t.get("name") == "clevertap.send_batch"]

        assert stack.emulator is not None

        def settled() -> bool:  # (a sweep's re-publish or a retry may add sends: count what is expected)
            assert stack.emulator is not None
            states = [t.get("state") for t in sends()]
            return (
                len(emulator_records(stack.emulator.url)) == 50
                and states.count("FAILURE") == 1
                and states.count("SUCCESS") >= 2
            )

        assert wait_for(settled, 90, 0.5, stack.group), (sends(), stack.logs())

        assert requests.get(api, timeout=5).status_code == 401
        assert requests.get(api, auth=(FLOWER_USER, "wrong"), timeout=5).status_code == 401
        for task in sends():  # ids only: integration, batch id, dispatch generation
            assert re.fullmatch(r"\('default', '[0-9a-f-]+', \d+\)", task["args"]), task["args"]
            assert "evtData" not in str(task) and "identity" not in str(task) and PASS not in str(task)
        (failed,) = [t for t in sends() if t["state"] == "FAILURE"]
        assert "PartialDelivery" in failed["exception"]
        assert "partial, 20 records, 10 delivered, 10 dead-lettered (513x10)" in failed["exception"]

        # One JSON object per log line; one outcome line per send, with its fields at the top level.
        lines = (tmp_path / "worker1.log").read_text().splitlines()
        parsed = [orjson.loads(line) for line in lines if line.startswith("{")]
        # Every log record is JSON; what is not is celery's start banner (celery worker --quiet drops it).
        assert not [line for line in lines if re.match(r"\[\d{4}-\d\d-\d\d", line)]
        assert len(parsed) > 10
        outcomes = [p for p in parsed if p.get("logger") == "pipeline.outcomes"]
        assert all(o["task_name"] == "clevertap.send_batch" and o["task_id"] for o in outcomes)
        sent = [o for o in outcomes if o["status"] in ("delivered", "partial")]
        by_status = sorted((o["status"], o["records"], o["processed"], o["rejected"]) for o in sent)
        assert by_status == [("delivered", 20, 20, 0), ("delivered", 20, 20, 0), ("partial", 20, 10, 10)]
        partial = next(o for o in outcomes if o["status"] == "partial")
        assert partial["level"] == "ERROR" and partial["http_status"] == 200 and partial["attempt"] == 1
        assert partial["codes"] == {"513": 10} and partial["latency_s"] > 0
        assert re.fullmatch(r"[0-9a-f-]+", partial["batch_id"]) and partial["integration"] == "default"
        # An ingest message sent without argsrepr carries events (emails): Celery attaches the arguments to
        # its own log lines, and the JSON lines must not write them out.
        from tasks import app

        app.conf.broker_url = stack.redis_url
        # (at the top of the event: Celery's saferepr of the arguments cuts deeper levels short)
        app.send_task("clevertap.ingest", ([{**events(1, start=100)[0], "userId": SECRET}],))
        assert wait_for(lambda: len(emulator_records(stack.emulator.url)) == 51, 60, 0.5, stack.group)
        assert "clevertap.ingest" in (tmp_path / "worker1.log").read_text()
        logs = stack.logs(tail=10**7) + (tmp_path / "flower.log").read_text()
        assert SECRET not in logs
        assert PASS not in logs and FLOWER_PASSWORD not in logs and "evtData" not in logs
    finally:
        stack.stop()
