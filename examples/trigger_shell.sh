#!/usr/bin/env bash
# Upstream job as a shell step: fail the step when any event is rejected, keep the summary for later steps.
#   CLEVERTAP_ACCOUNT_ID=... CLEVERTAP_PASSCODE=... CLEVERTAP_REGION=eu1 REDIS_URL=... \
#     bash examples/trigger_shell.sh examples/events.jsonl
set -euo pipefail
summary=$(clevertap-pipeline ingest --json --strict "$1" | tail -n 1)
echo "clevertap ingest: $summary"
