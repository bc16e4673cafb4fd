"""A worker must outlive a Redis restart: a patch for kombu's Redis transport (5.3.2 to 5.7.0, the newest).

When the broker goes away while a worker holds unacknowledged messages with a BRPOP outstanding (its
prefetch not full), Celery 5.7 closes the connection twice. kombu's ``Channel.close`` first reads the
outstanding BRPOP; on the dead socket that raises a connection error it does not catch (only ``Empty``), so
the first close stops half-way, and the second one restores the unacked messages through a connection
whose client is already gone: ``AttributeError: 'NoneType' object has no attribute 'hostname'``, an
"Unrecoverable error", and the worker exits (measured: most workers of a pipeline, on one Redis restart).

The patch lets that read fail like an empty one, so the first close completes while the connection is
whole and the worker reconnects (kombu PR #1733 added the read; Celery PR #10242 the second close). It is
applied only to the kombu versions known to need it; tests/test_faults.py restarts Redis under workers
and counts a worker that exits as a failure.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis

#: kombu versions with the half-finished close (from 5.3.2, when the BRPOP read arrived, to the newest).
AFFECTED = ((5, 3, 2), (5, 7, 0))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def needed(version: str = kombu.__version__) -> bool:
    return AFFECTED[0] <= _version(version) <= AFFECTED[1]


def apply() -> bool:
    """Patch ``kombu.transport.redis.Channel.close`` once; True when this kombu needs it."""
    channel: Any = kombu_redis.Channel
    if not needed() or getattr(channel.close, "_clevertap_patched", False):
        return False
    original = channel.close

    def close(self: Any) -> None:
        if self._in_poll and not self.closed:
            try:
                self._brpop_read()  # its finally clears _in_poll, so the original does not read again
            except Empty:
                pass
            except self.connection_errors:  # the broker went away under the outstanding BRPOP
                pass
        original(self)

    close._clevertap_patched = True  # type: ignore[attr-defined]
    channel.close = close
    return True
