"""A Segment-compatible HTTP collector: the Segment HTTP Tracking API in front of ``ingest``.

``POST /v1/batch`` (``{"batch": [...]}``) and the single calls ``/v1/track``, ``/v1/identify``, ``/v1/page``,
``/v1/screen``, ``/v1/alias``, ``/v1/group``. The write key authenticates the caller and chooses the
integration: HTTP Basic with the key as the user name (the RudderStack SDK, and Segment's 2.x SDK with it),
or a ``writeKey`` field in the body. A 200 means the events are queued in Redis by the same atomic enqueue as
``ingest``; a 503 with ``Retry-After`` (Redis unreachable, or the integration past its high-water mark) lets
the SDK's own retry keep them; a 400 names what is wrong with the body. One bad event in a batch does not
refuse the others: it becomes a mapping dead letter with its reason.

This module is the framework-free core (:meth:`Collector.handle`, tested directly); ``pipeline.collect_app``
serves it over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.config import Settings
from pipeline.errors import QueueFull, where
from pipeline.ingest import CHUNK, TRANSIENT_REDIS_ERRORS, Ingestor, chunked
from pipeline.store import Store

log = logging.getLogger("pipeline.collector")

#: Segment's limits: a single call up to 32 KB, a batch up to 500 KB (of JSON, after any gzip).
MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
CALLS = ("track", "identify", "page", "screen", "alias", "group")
#: Seconds an SDK is asked to wait before trying again.
RETRY_AFTER_REDIS_S = 5
RETRY_AFTER_FULL_S = 30


@dataclass
class Answer:
    """What the collector answers: an HTTP status, a JSON body, and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)


OK = Answer(200, {"success": True})


def _error(status: int, code: str, message: str, **headers: str) -> Answer:
    # {"code", "message"}: what the Segment and RudderStack SDKs read from an error answer (and log)
    return Answer(status, {"success": False, "code": code, "message": message}, dict(headers))


def limit_for(path: str) -> int:
    """The largest body (after gzip) the path takes."""
    return MAX_BATCH_BYTES if path in ("/v1/batch", "/v1/import") else MAX_CALL_BYTES


def gunzip(body: bytes, limit: int) -> bytes:
    """The gzip body's content, refusing (ValueError) more than ``limit`` bytes of it: a small compressed
    body cannot unfold into gigabytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"Content-Encoding is gzip but the body is not: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise OverflowError
    if not inflater.eof:
        raise ValueError("the gzip body is cut short")
    return out


class Collector:
    """The collector's logic for every integration that has a write key."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.by_key: dict[bytes, str] = {}
        self.ingestors: dict[str, Ingestor] = {}
        for name, config in settings.integrations.items():
            if config.write_key is not None:
                self.by_key[config.write_key.reveal().encode()] = name
                self.ingestors[name] = Ingestor(store, config)

    def integration_for(self, key: str | None) -> str | None:
        """The integration whose write key ``key`` is; compared in constant time against every key."""
        if not key:
            return None
        given = key.encode("utf-8", "replace")
        found = None
        for known, name in self.by_key.items():
            if hmac.compare_digest(given, known):
                found = name
        return found

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one request. ``headers`` by lower-case name; ``body`` as read (at most ``limit_for(path)``
        bytes plus one: the server cuts it there)."""
        call = path.removeprefix("/v1/")
        if path not in ("/v1/batch", "/v1/import") and call not in CALLS:
            return _error(404, "not_found", f"no such endpoint: {path[:100]}")
        limit = limit_for(path)
        what = "a batch" if limit == MAX_BATCH_BYTES else "a single call"
        too_big = _error(400, "too_large", f"{what} may be at most {limit // 1024} KB")
        if len(body) > limit:
            return too_big
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            try:
                body = gunzip(body, limit)
            except OverflowError:
                return too_big
            except ValueError as exc:
                return _error(400, "bad_encoding", str(exc))
        elif encoding not in ("", "identity"):
            return _error(
                400, "bad_encoding", f"Content-Encoding {encoding[:40]!r} is not supported (gzip is)"
            )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, "bad_json", f"the body is not JSON: {exc}")
        if not isinstance(payload, dict):
            return _error(400, "bad_json", f"the body must be a JSON object, got {type(payload).__name__}")
        key = _basic_user(headers.get("authorization", "")) or _text(payload.get("writeKey"))
        integration = self.integration_for(key)
        if integration is None:
            return _error(
                401, "unauthorized", "a valid write key is required (HTTP Basic user name or writeKey)"
            )
        if limit == MAX_BATCH_BYTES:
            events = payload.get("batch")
            if not isinstance(events, list):
                return _error(400, "bad_batch", "batch: required, a list of calls")
            context = payload.get("context")
            context = context if isinstance(context, dict) and context else None
            # The batch's context applies to each call under it; a write key never reaches a dead letter.
            events = [_prepared(e, context) for e in events]
        else:
            payload.pop("writeKey", None)
            events = [{**payload, "type": payload.get("type") or call}]
        return self._queue(integration, events)

    def _queue(self, integration: str, events: list[Any]) -> Answer:
        ingestor = self.ingestors[integration]
        for chunk in chunked(enumerate(events), CHUNK):
            try:
                ingestor.ingest_chunk(chunk)
            except QueueFull:
                # Chunks before this one are queued; the SDK sends the whole batch again, and their
                # messageIds make the repeats duplicates (counted, not sent twice).
                return _error(
                    503, "queue_full", f"integration {integration!r} is over its high-water mark; try again",
                    **{"Retry-After": str(RETRY_AFTER_FULL_S)},
                )  # fmt: skip
            except TRANSIENT_REDIS_ERRORS as exc:
                log.warning("integration %s: Redis unreachable, answered 503: %s", integration, where(exc))
                return _error(
                    503, "unavailable", "the queue is unreachable; try again",
                    **{"Retry-After": str(RETRY_AFTER_REDIS_S)},
                )  # fmt: skip
        return OK

    def healthy(self) -> bool:
        try:
            return bool(self.store.r.ping())
        except TRANSIENT_REDIS_ERRORS:
            return False
        except Exception:  # any Redis error: not healthy
            return False


def _basic_user(header: str) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header (SDKs send the write key there)."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _prepared(event: Any, context: dict[str, Any] | None) -> Any:
    if not isinstance(event, dict):
        return event  # a bad call: ingest makes it a dead letter with its reason
    if "writeKey" in event:
        event = {k: v for k, v in event.items() if k != "writeKey"}
    if context is not None:
        own = event.get("context")
        if own is None:
            event = {**event, "context": context}
        elif isinstance(own, dict):
            event = {**event, "context": {**context, **own}}
    return event
