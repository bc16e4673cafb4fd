"""clevertap-pipeline: a server-side delivery pipeline for CleverTap's Upload Events API.

The flow, and the module for each step::

    events ──► events.py      validate one Datafly/Segment-style event (track, page, identify)
           ──► mapping.py     consent gate, identity, the preset's field mappings, CleverTap's limits (pure)
           ──► ingest.py      chunks of events in, records queued ─┐   rejected: dead letters (deadletters.py)
                                                                   ▼
               keys.py        the Redis key layout, in one table
               store.py       Redis, the source of truth: calls into lua/*.lua (every move atomic);
                              accounts.py, an account's tokens, limit and counts
                                                                   │ beat: clevertap.assemble
           ──► delivery.py    cut batches, send each under a token, record what came of it, sweep
                 ├ limiter.py   ≤ max_concurrency requests in flight per CleverTap account (leases in Redis)
                 ├ client.py    one HTTP POST /1/upload, nothing else talks to CleverTap
                 └ policy.py    what a response means (classify) and what to do about it (decide), pure
           ──► deadletters.py what CleverTap refused or mapping rejected: the entry, the Filter, listing
               replay.py      ... and queueing them again

Around it: config.py (settings, validated once, and the rules across integrations) with formats.py,
saved.py (the console's integrations, which workers serve too), presets/, secret.py, constants.py,
errors.py, runtime.py (per-process settings/store/deliverer for the Celery shells in ``tasks/``),
status.py, debugger.py, metrics.py, logs.py. The services use this core and never each other: cli/ (the
``clevertap-pipeline`` command), collector/, console/. ``pipeline.local`` is tooling (emulator, demo,
benchmarks, embedded Redis, process runner); it imports the product, never the other way round.
"""

from pipeline.ingest import IngestResult, ingest

__all__ = ["IngestResult", "__version__", "ingest"]
__version__ = "0.1.0"
