"""Upstream job in another service: publish the clevertap.ingest task on the pipeline's broker, without
importing the pipeline. Only REDIS_URL (the broker) is needed here; credentials stay with the workers.

    REDIS_URL=redis://redis:6379/0 python examples/trigger_celery.py examples/events.jsonl

The events travel in this one message, so `argsrepr` replaces them with a count wherever Celery shows
arguments (Flower, worker logs). The task returns counts; rejected events become dead letters.
"""

import json
import os
import sys

from celery import Celery

with open(sys.argv[1], encoding="utf-8") as f:
    events = [json.loads(line) for line in f if line.strip()]

app = Celery(broker=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
result = app.send_task(
    "clevertap.ingest",
    args=[events],
    kwargs={"integration": "default"},
    queue="clevertap",
    serializer="json",
    argsrepr=f"[<{len(events)} events>]",
    kwargsrepr="{'integration': 'default'}",
)
print(f"published clevertap.ingest {result.id} with {len(events)} events")
