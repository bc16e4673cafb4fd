#!/usr/bin/env bash
# Upstream job as a shell step: fail the step when any event is rejected, keep the summary for later steps.
#   CLEVERTAP_ACCOUNT_ID=... CLEVERTAP_PASSCODE=... CLEVERTAP_REGION=eu1 REDIS_URL=... \
#     bash examples/trigger_shell.sh examples/events.jsonl
# Exit status: ingest's (0; 1 when an event was rejected, with --strict; 2 configuration; 3 Redis
# unreachable or the queue full), after the summary line is printed either way.
set -uo pipefail
status=0
summary=$(clevertap-pipeline ingest --json --strict "$1" | tail -n 1) || status=$?
echo "clevertap ingest: ${summary:-no summary (see the error above)}"
exit "$status"
