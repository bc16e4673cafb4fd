"""The Celery app: broker settings and the beat schedule. No connection is made at import.

Every setting here serves invariant 1 of the architecture (Redis is the source of truth, Celery only
schedules): late acks and reject-on-lost so a killed worker's task is redelivered, prefetch 1 so one slow
batch does not hold others hostage, a visibility timeout longer than any countdown, and no results (the
outcome of every batch is in Redis, and results would carry arguments into one more place).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init
from kombu.entity import Queue

from pipeline import constants as C
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError
from pipeline.logs import use_format
from pipeline.saved import fernet_from
from pipeline.store import broker_is_a_cluster, eviction_warning
from tasks import kombu_patch

log = logging.getLogger(__name__)
kombu_patch.apply()  # a worker outlives a Redis restart (see tasks/kombu_patch.py)

app = Celery("clevertap_pipeline", include=["tasks.pipeline_tasks"])


def _settings_or_none() -> Settings | None:
    try:
        return load_settings()
    except ConfigError:
        return None  # the worker refuses to start with bad settings (below), with every error


_settings = _settings_or_none()


app.conf.update(
    # The broker is the pipeline's Redis (REDIS_URL, or redis_url in the config file) unless
    # CELERY_BROKER_URL (broker_url) says otherwise, as it must with redis_cluster (no cluster transport).
    broker_url=(_settings.broker_url or _settings.redis_url if _settings else None)
    or os.environ.get("CELERY_BROKER_URL")
    or os.environ.get("REDIS_URL")
    or C.DEFAULT_REDIS_URL,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": C.VISIBILITY_TIMEOUT_S,
        # a sentinel:// broker: the master its Sentinels watch
        **(
            {"master_name": _settings.broker_master_name}
            if _settings and _settings.broker_master_name
            else {}
        ),
    },
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    task_ignore_result=True,
    result_backend=None,
    result_extended=False,
    task_default_queue=C.INGEST_QUEUE,
    task_queues=(Queue(C.INGEST_QUEUE), Queue(C.SEND_QUEUE)),
    task_routes={"clevertap.send_batch": {"queue": C.SEND_QUEUE}},
    # Task events are off by default: they cost a publish per task state. Flower switches them on in the
    # workers when it starts (or: celery -A tasks control enable_events).
    worker_send_task_events=False,
    beat_schedule={
        "clevertap.assemble": {
            "task": "clevertap.assemble",
            "schedule": _settings.min_flush_interval if _settings else 1.0,
            "options": {"expires": 30},
        },
        "clevertap.sweep": {"task": "clevertap.sweep", "schedule": 5.0, "options": {"expires": 60}},
    },
)


@worker_init.connect
def _check_settings(**_: Any) -> None:
    """Fail fast: a worker with invalid settings says so at start, not on its first task. Warn when Redis
    may evict keys: evictions lose queued records without a word."""
    try:
        settings = load_settings()
        fernet_from()  # a console key that is not a Fernet key: refuse now, not on every task
    except ConfigError as exc:
        for path, msg in exc.errors:
            log.critical("configuration error: %s: %s", path, msg)
        raise SystemExit(2) from None
    broker = app.conf.broker_url
    if broker_is_a_cluster(broker):
        log.critical(
            "configuration error: broker_url: Celery's broker is a Redis Cluster node; kombu has no cluster "
            "transport: set CELERY_BROKER_URL to a plain Redis or a Sentinel-managed one"
        )
        raise SystemExit(2)
    warning = eviction_warning(settings.redis_url)  # on a cluster: of the node it names
    if warning:
        log.warning("%s", warning)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """``log_format = "json"`` (CLEVERTAP_LOG_FORMAT=json): one JSON object per log line, in workers and
    beat alike."""
    use_format(_settings.log_format if _settings else os.environ.get("CLEVERTAP_LOG_FORMAT", "text"), logger)
