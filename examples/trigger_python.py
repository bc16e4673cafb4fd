"""Upstream job, same codebase: call the Python API. Needs CLEVERTAP_* and REDIS_URL in the environment.

python examples/trigger_python.py examples/events.jsonl
"""

import json
import sys

import pipeline

with open(sys.argv[1], encoding="utf-8") as f:
    events = [json.loads(line) for line in f if line.strip()]

result = pipeline.ingest(events, integration="default")
print(json.dumps(result.counts()))
for rejection in result.rejections:
    print(f"event {rejection.index + 1} rejected: {'; '.join(rejection.reasons)}", file=sys.stderr)
sys.exit(1 if result.rejected else 0)
