"""A Segment-compatible HTTP collector: the Segment HTTP Tracking API in front of ``ingest``.

``POST /v1/batch`` (``{"batch": [...]}``) and the single calls ``/v1/track``, ``/v1/identify``, ``/v1/page``,
``/v1/screen``, ``/v1/alias``, ``/v1/group``. The write key authenticates the caller and chooses the
integration: HTTP Basic with the key as the user name (the RudderStack SDK, and Segment's 2.x SDK with it),
or a ``writeKey`` field in the body. A 200 means the events are queued in Redis by the same atomic enqueue as
``ingest``; a 503 with ``Retry-After`` (Redis unreachable, or the integration past its high-water mark) lets
the SDK's own retry keep them; a 400 names what is wrong with the body. One bad event in a batch does not
refuse the others: it becomes a mapping dead letter with its reason.

This module is the framework-free logic (:meth:`Collector.handle`, tested directly); :mod:`.app` serves it
over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from pipeline.collector.browser import (
    RateLimit,
    corrected,
    cors_headers,
    origin_allowed_anywhere,
    origin_matches,
)
from pipeline.config import Settings
from pipeline.errors import QueueFull, where
from pipeline.ingest import TRANSIENT_REDIS_ERRORS, Ingestor
from pipeline.store import Store

log = logging.getLogger("pipeline.collector")

#: Segment's limits: a single call up to 32 KB, a batch up to 500 KB (of JSON, after any gzip).
MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
CALLS = ("track", "identify", "page", "screen", "alias", "group")
#: analytics-next's short paths (its default in the browser): /v1/t for track, ... and /v1/b for a batch.
SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "a": "alias", "g": "group", "b": "batch"}
#: Seconds an SDK is asked to wait before trying again.
RETRY_AFTER_REDIS_S = 5
RETRY_AFTER_FULL_S = 30
#: Origins whose answer Collector._allowed_anywhere remembers; forgotten together past this many.
MAX_ORIGINS_REMEMBERED = 1024
#: The longest origin remembered (a real one is a scheme and a host name: at most about 270 characters).
MAX_ORIGIN_REMEMBERED = 300


@dataclass(frozen=True)
class Answer:
    """What the collector answers: an HTTP status, a JSON body, and extra headers (never changed once
    made: OK and the other stock answers are shared by every request)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)


OK = Answer(200, {"success": True})


@dataclass(slots=True)
class Prepared:
    """A request the collector accepts, not yet queued: its integration, its events, and the CORS
    headers its answer carries (not frozen: one is made for every request, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``)."""

    integration: str
    events: list[Any]
    cors: dict[str, str]

    def answered(self, answer: Answer) -> Answer:
        if not self.cors or answer.status == 403:
            return answer
        return Answer(answer.status, answer.body, {**answer.headers, **self.cors})


def error_answer(status: int, code: str, message: str, **headers: str) -> Answer:
    # {"code", "message"}: what the Segment and RudderStack SDKs read from an error answer (and log)
    return Answer(status, {"success": False, "code": code, "message": message}, dict(headers))


_CANONICAL = {f"/v1/{short}": f"/v1/{call}" for short, call in SHORT.items()}
_BATCH_PATHS = frozenset(("/v1/batch", "/v1/b", "/v1/import"))


def canonical(path: str) -> str:
    """``/v1/t`` as ``/v1/track``, ``/v1/b`` as ``/v1/batch``; any other path as it is."""
    return _CANONICAL.get(path, path)


def limit_for(path: str) -> int:
    """The largest body (after gzip) the path takes."""
    return MAX_BATCH_BYTES if path in _BATCH_PATHS else MAX_CALL_BYTES


def gunzip(body: bytes, limit: int) -> bytes:
    """The gzip body's content (every member of it), refusing (OverflowError) more than ``limit`` bytes: a
    small compressed body cannot unfold into gigabytes."""
    out = bytearray()
    rest = body
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise ValueError(f"Content-Encoding is gzip but the body is not: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise OverflowError
        if not inflater.eof:
            raise ValueError("the gzip body is cut short")
        rest = inflater.unused_data  # a body may hold several gzip members, one after another
    return bytes(out)


class Collector:
    """The collector's logic for every integration that has a write key."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        # Keys by their SHA-256 digest: compared in constant time whatever their length, and not kept as
        # they are.
        self.by_digest: dict[bytes, str] = {}
        self.ingestors: dict[str, Ingestor] = {}
        self.settings = settings
        self.rate = RateLimit()
        for name, config in settings.integrations.items():
            if config.write_key is not None:
                self.by_digest[_digest(config.write_key.reveal())] = name
                self.ingestors[name] = Ingestor(store, config)
        # After Redis failed to answer, refuse at once for a while instead of making every request wait
        # out the same timeout (requests queue behind one another in a worker process).
        self.unavailable_until = 0.0
        self._origins: dict[str, bool] = {}  # _allowed_anywhere's

    def integration_for(self, key: str | None) -> str | None:
        """The integration whose write key ``key`` is; compared in constant time against every key."""
        if not key:
            return None
        given = _digest(key)
        found = None
        for known, name in self.by_digest.items():
            if hmac.compare_digest(given, known):
                found = name
        return found

    def refuses_header(self, headers: Mapping[str, str]) -> Answer | None:
        """A 401 for a request whose HTTP Basic key is wrong, before its body is read; None otherwise (no
        such header: the key may be in the body)."""
        key = basic_user(headers.get("authorization", ""))
        if key is not None and self.integration_for(key) is None:
            return UNAUTHORIZED
        return None

    def handle(self, path: str, headers: Mapping[str, str], body: bytes, client: str = "") -> Answer:
        """Answer one request. ``headers`` by lower-case name; ``body`` as read (the server stops reading
        past ``limit_for(path)``); ``client``, the client's address (for a browser's rate limit). A request
        with an ``Origin`` header (a browser) is refused unless its integration allows that origin, and
        every request with a browser key is rate-limited per client address; the answer carries the CORS
        headers it needs."""
        prepared = self.prepare(path, headers, body, client)
        if isinstance(prepared, Answer):
            return prepared
        return prepared.answered(self._queue(prepared.integration, prepared.events))

    def prepare(
        self, path: str, headers: Mapping[str, str], body: bytes, client: str = ""
    ) -> Answer | Prepared:
        """Everything :meth:`handle` does before queueing: the Answer when it refuses the request, else
        what to queue (the app queues the requests of one event-loop turn together: :meth:`queue_many`)."""
        origin = headers.get("origin")
        cors = (
            cors_headers(origin) if origin is not None and self._allowed_anywhere(origin) else {}
        )  # readable by a page on an allowed origin only
        found = self._handle(canonical(path), headers, body, client, origin, datetime.now(UTC))
        if isinstance(found, Answer):
            return (
                Answer(found.status, found.body, {**found.headers, **cors})
                if cors and found.status != 403
                else found
            )
        return Prepared(found[0], found[1], cors)

    def _allowed_anywhere(self, origin: str) -> bool:
        """origin_allowed_anywhere for this collector's settings, remembered for the origins seen last
        (a page's visitors send the same few)."""
        allowed = self._origins.get(origin)
        if allowed is None:
            allowed = origin_allowed_anywhere(origin, self.settings.integrations)
            if len(origin) <= MAX_ORIGIN_REMEMBERED:  # a header may be 32 KB: such an origin is not kept
                if len(self._origins) >= MAX_ORIGINS_REMEMBERED:
                    self._origins.clear()
                self._origins[origin] = allowed
        return allowed

    def queue_many(self, integration: str, requests: list[Prepared]) -> Answer:
        """Queue several requests' events for one integration in one atomic enqueue (at most CHUNK events:
        the caller groups them so): each request is queued whole, with the others or not at all. One Redis
        round trip for them all."""
        return self._queue(integration, [e for r in requests for e in r.events])

    async def queue_many_async(self, integration: str, requests: list[Prepared], client: Any) -> Answer:
        """:meth:`queue_many` on the event loop, its round trips through ``client`` (``redis.asyncio``, for
        the store's Redis): the loop reads and prepares other requests while Redis works."""
        if time.monotonic() < self.unavailable_until:
            return UNAVAILABLE
        events = [e for r in requests for e in r.events]
        try:
            await self.ingestors[integration].ingest_chunk_async(list(enumerate(events)), client)
        except Exception as exc:
            return self._refused(integration, exc)
        return OK

    def _handle(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        client: str,
        origin: str | None,
        received: datetime,
    ) -> Answer | tuple[str, list[Any]]:
        call = path.removeprefix("/v1/")
        if path not in ("/v1/batch", "/v1/import") and call not in CALLS:
            return error_answer(404, "not_found", f"no such endpoint: {path[:100]}")
        limit = limit_for(path)
        if len(body) > limit:
            return _too_big(limit)
        header_key = basic_user(headers.get("authorization", ""))
        if header_key is not None and self.integration_for(header_key) is None:
            return UNAUTHORIZED  # before any work on the body
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            try:
                body = gunzip(body, limit)
            except OverflowError:
                return _too_big(limit)
            except ValueError as exc:
                return error_answer(400, "bad_encoding", str(exc))
        elif encoding not in ("", "identity"):
            message = f"Content-Encoding {encoding[:40]!r} is not supported (gzip is)"
            return error_answer(400, "bad_encoding", message)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error_answer(400, "bad_json", f"the body is not JSON: {exc}")
        if not isinstance(payload, dict):
            return error_answer(
                400, "bad_json", f"the body must be a JSON object, got {type(payload).__name__}"
            )
        integration = self.integration_for(header_key or _text(payload.get("writeKey")))
        if integration is None:
            return UNAUTHORIZED
        refused = self._browser(integration, origin, client)
        if refused is not None:
            return refused
        if limit == MAX_BATCH_BYTES:
            events = payload.get("batch")
            if not isinstance(events, list):
                return error_answer(400, "bad_batch", "batch: required, a list of calls")
            for n, item in enumerate(
                events
            ):  # not calls at all: refused whole, not dead letters by the 1,000
                if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                    return error_answer(
                        400, "bad_batch", f"batch[{n}]: must be a call, an object with a type"
                    )
            shared = {k: payload[k] for k in ("context", "integrations") if isinstance(payload.get(k), dict)}
            # The batch's context and integrations apply to each call under it (the call's own keys win);
            # a write key never reaches a dead letter.
            sent_at = payload.get("sentAt")
            events = [corrected(_prepared(e, shared), received, sent_at) for e in events]
        else:
            payload.pop("writeKey", None)  # the body is this request's own: changed in place, not copied
            payload["type"] = call  # the path says the call
            events = [corrected(payload, received)]
        return integration, events

    def _browser(self, integration: str, origin: str | None, client: str) -> Answer | None:
        """A request with an Origin (a browser) is refused (403) unless the integration allows the origin;
        every request with a browser key (an integration with allowed_origins: the key is in its pages,
        so anyone has it, with or without an Origin) is held to the rate limit per client address (429).
        None when it may go on."""
        config = self.ingestors[integration].config
        if origin is not None and not origin_matches(origin, config.allowed_origins):
            return error_answer(
                403, "origin_not_allowed", f"origin {origin[:100]!r} may not post to this write key"
            )
        if not config.allowed_origins:
            return None  # a server's key: in no page
        wait = self.rate.take(client, config.browser_rate_limit, config.browser_rate_burst)
        if wait > 0:
            with contextlib.suppress(redis.RedisError):
                self.store.incr(integration, "browser_rate_limited")
            return error_answer(429, "rate_limited", "too many requests from this address; try again",
                                **{"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip
        return None

    def _queue(self, integration: str, events: list[Any]) -> Answer:
        """Queue every event of the request in one atomic enqueue (a request is 500 KB at most): a request
        is queued whole or not at all. A 503 after Redis refused it left nothing queued; one after a timeout
        may have been queued all the same, and the SDK's resend is then a duplicate by messageId (the SDKs
        send one with every call), counted and not sent twice."""
        if time.monotonic() < self.unavailable_until:
            return UNAVAILABLE
        try:
            self.ingestors[integration].ingest_chunk(list(enumerate(events)))
        except Exception as exc:
            return self._refused(integration, exc)
        return OK

    def _refused(self, integration: str, exc: Exception) -> Answer:
        """The answer to a request whose enqueue raised ``exc``: nothing of it was queued, or, after a
        timeout, perhaps all of it (never a part)."""
        if isinstance(exc, QueueFull):
            return error_answer(
                503, "queue_full", f"integration {integration!r} is over its high-water mark; try again",
                **{"Retry-After": str(RETRY_AFTER_FULL_S)},
            )  # fmt: skip
        if isinstance(exc, redis.RedisError):  # unreachable, timed out, read-only after a failover, full
            if isinstance(exc, TRANSIENT_REDIS_ERRORS):
                self.unavailable_until = time.monotonic() + 1.0
            # Redis's own words only where they cannot quote what was sent (a script's error could)
            said = f": {str(exc)[:200]}" if isinstance(exc, _PLAIN_REDIS_ERRORS) else ""
            log.warning("integration %s: Redis failed, answered 503: %s%s", integration, where(exc), said)
            return UNAVAILABLE
        # a bug: the SDK keeps the events and tries again, and the log says why
        log.error("integration %s: could not queue a request, answered 503: %s", integration, where(exc))
        return UNAVAILABLE

    def healthy(self) -> bool:
        """Redis takes a write (a ping alone passes on a read-only or full Redis)."""
        try:
            self.store.r.set(self.store.health_key, "1", px=10_000)
        except Exception:
            return False
        return True


_PLAIN_REDIS_ERRORS = (
    *TRANSIENT_REDIS_ERRORS,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)
UNAUTHORIZED = error_answer(
    401, "unauthorized", "a valid write key is required (the HTTP Basic user name, or writeKey in the body)"
)
UNAVAILABLE = error_answer(
    503, "unavailable", "the queue is unavailable; try again", **{"Retry-After": str(RETRY_AFTER_REDIS_S)}
)


def _too_big(limit: int) -> Answer:
    what = "a batch" if limit == MAX_BATCH_BYTES else "a single call"
    return error_answer(400, "too_large", f"{what} may be at most {limit // 1024} KB")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


def basic_user(header: str) -> str | None:
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


def _prepared(event: dict[str, Any], shared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if "writeKey" in event:
        event = {k: v for k, v in event.items() if k != "writeKey"}
    for key, value in shared.items():
        own = event.get(key)
        if own is None:
            event = {**event, key: value}
        elif isinstance(own, dict):
            event = {**event, key: {**value, **own}}
    return event
