"""The Celery shells: thin, ids and counts only, configured for at-least-once delivery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pipeline import runtime
from pipeline.local.sample import SPEC_PURCHASE
from pipeline.store import Store
from tests.helpers import environment


@pytest.fixture
def task_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in environment(redis_url).items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield
    runtime.reset()


def test_ingest_task_queues_events_and_returns_counts_only(task_env: None, store: Store) -> None:
    from tasks.pipeline_tasks import ingest

    result: Any = ingest.apply(args=([SPEC_PURCHASE, {"type": "bad"}],)).get()
    assert result == {
        "accepted": 1,
        "filtered": 0,
        "duplicate": 0,
        "rejected": 1,
        "fields_dropped": 0,
        "held": 0,
    }
    assert store.r.llen(store.key("default", "pending")) == 1


def test_ingest_task_maps_real_world_traffic_as_ingest_and_preview_do(task_env: None, store: Store) -> None:
    from tasks.pipeline_tasks import ingest

    traffic = [
        {"type": "page", "anonymousId": "a1", "messageId": "t1"},  # anonymous: filtered
        {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "t2"},  # filtered
        {"type": "screen", "name": "Home", "userId": "u1", "messageId": "t3"},
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "t4",
            "context": {"traits": {"email": "u1@example.com", "gender": "Female", "phone": "5550100"}},
        },
    ]
    result: Any = ingest.apply(args=(traffic,)).get()
    assert result == {
        "accepted": 2,
        "filtered": 2,
        "duplicate": 0,
        "rejected": 0,
        "fields_dropped": 1,
        "held": 0,
    }
    queued = [orjson.loads(r) for r in store.r.lrange(store.key("default", "pending"), 0, -1)]
    assert queued[0]["evtName"] == "Screen Viewed" and queued[0]["evtData"] == {"name": "Home"}
    assert queued[1]["profileData"] == {"Email": "u1@example.com", "Gender": "F"}
    assert store.stats("default")["fields_dropped:Phone"] == 1 and store.dead_letter_count("default") == 0


def test_celery_app_is_configured_for_at_least_once_delivery() -> None:
    from pipeline import constants as C
    from tasks import app

    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result
    assert conf.broker_transport_options["visibility_timeout"] > C.MAX_COUNTDOWN_S
    assert {q.name for q in conf.task_queues} == {"clevertap", C.SEND_QUEUE}
    assert "clevertap.ingest" in app.tasks


def test_the_broker_is_the_configured_redis_wherever_it_is_configured(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT, environment

    path = tmp_path / "c.toml"
    path.write_text(
        'redis_url = "redis://from-file:6379/3"\n'
        '[integrations.a]\naccount_id="A"\npasscode="p"\nregion="us1"\n'
    )
    code = "from tasks import app; print(app.conf.broker_url)"

    def broker(**env: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=environment(None, process=True, credentials=False, **env),
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=True,
        )
        return out.stdout.decode().strip()

    assert broker(CLEVERTAP_PIPELINE_CONFIG=str(path)) == "redis://from-file:6379/3"
    assert broker(REDIS_URL="redis://from-env:6379/1") == "redis://from-env:6379/1"
    assert broker(CLEVERTAP_PIPELINE_CONFIG=str(path), CELERY_BROKER_URL="redis://broker:6379/0") == (
        "redis://broker:6379/0"
    )
