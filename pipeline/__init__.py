"""clevertap-pipeline: a server-side delivery pipeline for CleverTap's Upload Events API.

The flow, and the module for each step::

    events ──► events.py      validate one Datafly/Segment-style event (track, page, identify)
           ──► mapping.py     consent gate, identity, the preset's field mappings, CleverTap's limits (pure)
           ──► ingest.py      chunks of events in, records queued ─┐   rejected: dead letters (deadletters.py)
                                                                   ▼
               store.py       Redis, the source of truth: key layout, calls into lua/*.lua (every move atomic)
                                                                   │ beat: clevertap.assemble
           ──► delivery.py    cut batches, send each under a token, record what came of it, sweep
                 ├ limiter.py   ≤ max_concurrency requests in flight per CleverTap account (leases in Redis)
                 ├ client.py    one HTTP POST /1/upload, nothing else talks to CleverTap
                 └ policy.py    what a response means (classify) and what to do about it (decide), pure
           ──► deadletters.py list, replay, drop what CleverTap refused or mapping rejected

Around it: config.py (settings, validated once), constants.py (CleverTap's limits), errors.py,
runtime.py (per-process settings/store/deliverer for the Celery shells in ``tasks/``), status.py and
cli.py (the ``clevertap-pipeline`` command). ``pipeline.local`` is tooling (emulator, demo, benchmarks,
embedded Redis, process runner); it imports the product, never the other way round.
"""

from pipeline.ingest import IngestResult, ingest

__all__ = ["IngestResult", "__version__", "ingest"]
__version__ = "0.1.0"
