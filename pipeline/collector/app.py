"""The collector over HTTP, served by uvicorn (``clevertap-pipeline collect``): ``POST /v1/<call>`` as plain
ASGI (CollectorApp), the rest (the SDKs' settings, preflights, /health) a small Starlette app.

Starlette and uvicorn were chosen by measurement (README, dependency notes). The app reads a body only up
to the path's limit, hands it to :class:`~pipeline.collector.core.Collector` on the event loop
(measured: cheaper than a worker thread per request), and answers with what that returns. Nothing here
logs a header or a body: the write key and the events stay out of the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.collector.browser import (
    client_address,
    cors_headers,
    from_trusted_proxy,
    origin_allowed_anywhere,
    origin_matches,
    preflight_headers,
    public_host,
    rudderstack_source_config,
    segment_settings,
)
from pipeline.collector.core import (
    MAX_ORIGIN_REMEMBERED,
    OK,
    UNAUTHORIZED,
    UNAVAILABLE,
    Answer,
    Collector,
    Prepared,
    basic_user,
    error_answer,
    limit_for,
)
from pipeline.config import IntegrationConfig, Settings, load_settings
from pipeline.errors import where
from pipeline.ingest import CHUNK
from pipeline.saved import LiveSettings
from pipeline.store import Store, client_for

#: Requests one worker process handles at once (reading a body of up to 500 KB, or queueing it); past it
#: a 503 with Retry-After (the SDK tries again). Open connections, idle or half-sent, are capped apart
#: (pipeline.cli.http): they no longer use up this limit.
MAX_REQUESTS = 256
#: Of which one client address may have this many (its bodies arriving slowly hold only its own share).
MAX_REQUESTS_PER_CLIENT = 16
RETRY_AFTER_BUSY_S = 1
#: Longest an enqueue waits for the requests still being read to join it (GroupCommit).
GATHER_S = 0.001
#: An integration has one enqueue out at a time: its requests reach Redis in the order they came, and each
#: enqueue reads what the one before it wrote (a visitor's held events, a user's email); those ready
#: meanwhile go together in the next. (A second begun beside the one out, mapping its requests meanwhile
#: and waiting for it before its first round trip, measured slower: smaller enqueues.)

log = logging.getLogger("pipeline.collector")

#: On every answer: the body is JSON for SDKs, never a page to render or cache.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def _respond(answer: Answer) -> Response:
    """``answer`` as a Starlette Response (the routes other than the calls), encoded as the calls' are."""
    body, headers = _raw(answer)
    response = Response(body, status_code=answer.status)
    response.raw_headers = headers
    return response


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SECURITY_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]


def _raw(answer: Answer) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``answer``'s body and header lines as the ASGI server takes them: what Starlette's Response makes
    of it (lower-case names, the length, JSON)."""
    body = answer.encoded()
    headers = [
        *_SECURITY_RAW,
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()),
        (b"content-length", str(len(body)).encode("latin-1")),
        (b"content-type", b"application/json"),
    ]
    return body, headers


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _answer(send: Send, answer: Answer) -> None:
    await _send(send, answer.status, *_raw(answer))


def _answered(answer: Answer) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    return answer.status, *_raw(answer)


INTERNAL = error_answer(500, "internal", "the collector failed; try again")


class _Plain:
    """An ASGI function as a Starlette endpoint (a function itself is called with a Request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Disconnected(Exception):
    """The client hung up before its request's body arrived."""


#: The 200s encoded, one per set of CORS headers (origin); emptied when it holds this many (an allowed
#: ``https://*.example.com`` has no end of subdomains).
MAX_ENCODED = 1024


#: The collector process's garbage collector once it serves (serving_gc): a young generation this large
#: and older ones collected this rarely.
GC_THRESHOLDS = (50_000, 20, 10)


def serving_gc() -> None:
    """Tune this process's garbage collector for serving: what start-up made (modules, settings, the app)
    is set aside for good (gc.freeze, after a collection), and collections come later. Objects without
    cycles are freed as they go either way; this is the work of looking for cycles. With CPython's
    defaults (a collection every 700 new objects, each walking whatever is young, and the older
    generations' every so often) it was a third of the collector's CPU with 64 requests in flight:
    76 µs of CPU a request with it, 113 µs without (bench-collect's browser shape, one sitting). A bare
    endpoint's figure does not move: it holds few objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(
    settings: Settings | None = None, store: Store | None = None, tune_gc: bool = False
) -> CollectorApp:
    """The collector app for ``settings`` (default: the environment and the TOML file). ``tune_gc``: the
    process is a server of its own (``collect``), whose garbage collector the app tunes when it starts
    (serving_gc); not where the app is one thing in a larger process (a test)."""
    live = None
    if settings is None:
        base = load_settings()
        # Bounded waits: a Redis that hangs must become a 503 the SDK retries, not a request held for ever.
        client = client_for(
            base.redis_url,
            base.redis_cluster,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
        )
        store = Store(client, base.key_prefix, base.redis_wait_replicas)
        live = LiveSettings(lambda: base, store)  # integrations saved in the console, within 5 s
        settings = live.current()
    if store is None:
        store = Store.for_settings(settings)
    state = {"settings": settings, "collector": Collector(settings, store)}
    in_flight = [0]
    by_client: dict[str, int] = {}
    commits = GroupCommit(in_flight)
    encoded_ok: dict[tuple[tuple[str, str], ...], tuple[bytes, list[tuple[bytes, bytes]]]] = {}
    redis_url, on_cluster = settings.redis_url, settings.redis_cluster

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        """While the app serves: an asyncio client for the store's Redis, so the event loop reads and
        prepares other requests while an enqueue waits on Redis (on a cluster, the blocking client)."""
        if tune_gc:
            serving_gc()
        if not on_cluster:
            commits.redis = redis.asyncio.Redis.from_url(
                redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
        try:
            yield
        finally:
            client, commits.redis = commits.redis, None
            if client is not None:
                await client.aclose()

    def current() -> Collector:
        if live is not None:
            now = live.current()
            if now is not state["settings"]:
                state["settings"], state["collector"] = now, Collector(now, store)
        collector: Collector = state["collector"]  # type: ignore[assignment]
        return collector

    def client_of(scope: Scope, headers: dict[str, str], collector: Collector) -> str:
        peer = scope["client"][0] if scope.get("client") else None
        trusted = collector.settings.trusted_proxies
        # read only behind trusted proxies (a proxy may add its own line); anyone can write it
        forwarded = ""
        if trusted:
            forwarded = ",".join(
                v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"
            )
        return client_address(peer, forwarded, trusted)

    async def calls(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/<call>``, nearly every request: plain ASGI, not through Starlette's middleware,
        Request and Response (they cost about 17 µs a request, as much as the HTTP stack under them:
        bench-collect's browser shape; the other routes keep Starlette)."""
        try:
            collector = current()
            # from the ASGI scope as they came (lower-case names), not through Starlette's Headers
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            client = client_of(scope, headers, collector)
        except Exception as exc:  # a bug: one line that quotes nothing, and a 500
            log.error("a request failed, answered 500: %s", where(exc))
            return await _answer(send, INTERNAL)
        if in_flight[0] >= MAX_REQUESTS or by_client.get(client, 0) >= MAX_REQUESTS_PER_CLIENT:
            busy = error_answer(
                503, "busy", "the collector is busy; try again", **{"Retry-After": str(RETRY_AFTER_BUSY_S)}
            )
            return await _answer(send, busy)
        in_flight[0] += 1
        by_client[client] = by_client.get(client, 0) + 1
        # Counted while it is read, prepared and queued, not while its answer is written: a client that
        # stops reading its answers (its socket full) holds a connection, capped apart, not a request slot.
        try:
            status, body, raw_headers = await _calls(scope, receive, headers, client, collector)
        except _Disconnected:  # the client hung up mid-body: nothing was queued, one short line
            log.info("a client hung up before its request's body arrived: nothing queued")
            return
        except Exception as exc:  # a bug: one line (never a message: it could quote the body), a 500
            log.error("a request failed, answered 500: %s", where(exc))
            status, (body, raw_headers) = 500, _raw(INTERNAL)
        finally:
            in_flight[0] -= 1
            by_client[client] -= 1
            if not by_client[client]:
                del by_client[client]
        await _send(send, status, body, raw_headers)

    async def _calls(
        scope: Scope, receive: Receive, headers: dict[str, str], client: str, collector: Collector
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """What to answer the request (``calls`` sends it)."""
        path = scope["path"]
        limit = limit_for(path)
        refused = collector.refuses_header(headers)  # a wrong key in the header: no body is read
        if refused is not None:
            return _answered(_with_cors(refused, headers, collector))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _answered(error_answer(400, "too_large", f"the body may be at most {limit // 1024} KB"))
        body = bytearray()
        # a client that stalls mid-body is answered 408 and let go by the protocol (pipeline.cli.http)
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:  # stop reading: the rest is never buffered
                return _answered(
                    error_answer(400, "too_large", f"the body may be at most {limit // 1024} KB")
                )
        # On the event loop, not in a thread: preparing is CPU work, and the hop to a thread cost 40% more CPU
        # per event (bench-collect); the enqueue awaits Redis (GroupCommit), so a slow client or a round
        # trip holds no one up (--workers for cores).
        prepared = collector.prepare(path, headers, bytes(body), client)
        if isinstance(prepared, Answer):
            return _answered(prepared)
        answer = await commits.submit(collector, prepared)
        if answer is not OK:
            return _answered(prepared.answered(answer))
        cors = tuple(prepared.cors.items())
        found = encoded_ok.get(cors)
        if found is None:
            found = _raw(prepared.answered(OK))
            if len(prepared.cors.get("Access-Control-Allow-Origin", "")) <= MAX_ORIGIN_REMEMBERED:
                if len(encoded_ok) >= MAX_ENCODED:
                    encoded_ok.clear()
                encoded_ok[cors] = found
        return 200, found[0], list(found[1])  # a copy: the cached list is never handed out

    async def preflight(request: Request) -> Response:
        """A browser's CORS preflight: allowed when any integration with a write key allows the origin (the
        request that follows is held to its own integration's list)."""
        origin = request.headers.get("origin", "")
        if not origin or not origin_allowed_anywhere(origin, current().settings.integrations):
            return Response(status_code=403, headers=SECURITY_HEADERS)
        requested = request.headers.get("access-control-request-headers", "")
        return Response(status_code=204, headers={**SECURITY_HEADERS, **preflight_headers(origin, requested)})

    def _keyed(
        request: Request, collector: Collector, key: str | None
    ) -> tuple[str, IntegrationConfig] | Response:
        """The write key's integration, for the SDKs' settings: 401 without a known key, 403 for a page on
        an origin it does not allow."""
        name = collector.integration_for(key)
        if name is None or key is None:
            return _respond(UNAUTHORIZED)
        config = collector.settings.integration(name)
        origin = request.headers.get("origin")
        if origin is not None and not origin_matches(origin, config.allowed_origins):
            return Response(status_code=403, headers=SECURITY_HEADERS)
        return key, config

    def _json(body: Any, request: Request) -> Response:
        origin = request.headers.get("origin")
        extra = cors_headers(origin) if origin else {}
        return Response(
            orjson.dumps(body), headers={**SECURITY_HEADERS, **extra}, media_type="application/json"
        )

    async def segment_project_settings(request: Request) -> Response:
        """analytics-next's ``{cdnURL}/v1/projects/{writeKey}/settings``."""
        collector = current()
        found = _keyed(request, collector, request.path_params["key"])
        if isinstance(found, Response):
            return found
        key, config = found
        host, scheme = request.headers.get("host", ""), request.url.scheme
        peer = request.client.host if request.client else ""
        if from_trusted_proxy(peer, collector.settings.trusted_proxies):
            # from a trusted proxy (TLS in front): the host and scheme the page used are the proxy's
            host = request.headers.get("x-forwarded-host", host).split(",")[0].strip()
            scheme = request.headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
        public = public_host(host)
        if public is None or scheme not in ("http", "https"):
            return _respond(error_answer(400, "bad_host", "the Host header is not host[:port]"))
        return _json(segment_settings(config, key, public, scheme), request)

    async def rudderstack_config(request: Request) -> Response:
        """RudderStack's JS SDK (v3) at ``{configUrl}/sourceConfig``: the write key as HTTP Basic, or
        ``writeKey`` in the query."""
        collector = current()
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = basic_user(headers.get("authorization", "")) or request.query_params.get("writeKey")
        found = _keyed(request, collector, key)
        if isinstance(found, Response):
            return found
        return _json(rudderstack_source_config(found[1]), request)

    async def health(_: Request) -> Response:
        ok = current().healthy()
        return _respond(Answer(200, {"ok": True}) if ok else Answer(503, {"ok": False}))

    app = Starlette(
        lifespan=lifespan,
        routes=[
            # reached only for another method (a 405): CollectorApp takes every POST /v1/<call> first
            Route("/v1/{call}", _Plain(calls), methods=["POST"]),
            Route("/v1/projects/{key}/settings", segment_project_settings, methods=["GET"]),
            Route("/sourceConfig", rudderstack_config, methods=["GET"]),
            Route("/sourceConfig/", rudderstack_config, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/{path:path}", preflight, methods=["OPTIONS"]),  # the calls' and the SDKs' settings
        ],
    )
    app.router.redirect_slashes = False  # a redirect would be built from the Host header
    return CollectorApp(app, calls, in_flight, by_client)


class CollectorApp:
    """The collector's ASGI app: ``POST /v1/<call>`` (what Starlette's ``/v1/{call}`` matches) straight to
    its handler, everything else (the SDKs' settings, preflights, /health, the lifespan) to Starlette."""

    def __init__(
        self, starlette: Starlette, calls: ASGIApp, in_flight: list[int], by_client: dict[str, int]
    ) -> None:
        self.starlette = starlette
        self.calls = calls
        self.in_flight, self.by_client = in_flight, by_client  # the requests being handled, and by whom

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path.startswith("/v1/") and len(path) > 4 and "/" not in path[4:]:
                return await self.calls(scope, receive, send)
        await self.starlette(scope, receive, send)


Item = tuple[Collector, Prepared, asyncio.Future[Answer]]


class GroupCommit:
    """Requests queued together: one atomic enqueue (one Redis round trip) for all of an integration's
    that are ready, up to CHUNK events at once. Each request is still queued whole or not at all, and
    answered with what its enqueue came to. With ``redis`` (an asyncio client for the store's Redis, set
    while the app serves) the enqueue awaits Redis and the loop goes on reading and preparing requests
    meanwhile; an integration has one enqueue out at a time (its requests reach Redis in the order they
    came), and those ready meanwhile go together in its next. Without it, the enqueue blocks the loop (a
    thread hand-off cost more CPU than it saved, bench-collect). While requests this process is handling
    are still being read or prepared, a commit waits for them, at most GATHER_S, so that one-event requests
    (a page's) share a round trip instead of each paying its fixed cost. An idle collector sends each
    request at once."""

    def __init__(self, in_flight: list[int] | None = None) -> None:
        #: the requests this process is handling (the app's count, read when a commit ends)
        self.in_flight = in_flight if in_flight is not None else [1]
        #: by (collector, integration), in the order they came
        self.waiting: dict[tuple[int, str], list[Item]] = {}
        self.n_waiting = 0
        self.scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.redis: Any = None
        self.running = 0  # commits out
        self.committing = 0  # the requests in them
        #: the integrations with a commit out (by name: after the settings change, a new Collector's requests
        #: wait for the old one's commit too)
        self.out: set[str] = set()
        self.tasks: set[asyncio.Task[Answer]] = set()

    def submit(
        self, collector: Collector, prepared: Prepared, in_flight: int | None = None
    ) -> asyncio.Future[Answer]:
        """Queue ``prepared`` with the others waiting. ``in_flight``: the requests this process is handling
        (this one included; default: the app's count); while some are still being read or prepared, the
        enqueue waits for them, at most GATHER_S, so they share its round trip."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Answer] = loop.create_future()
        self.waiting.setdefault((id(collector), prepared.integration), []).append((collector, prepared, done))
        self.n_waiting += 1
        self._soon(loop, self.in_flight[0] if in_flight is None else in_flight)
        return done

    def _soon(self, loop: asyncio.AbstractEventLoop, in_flight: int) -> None:
        """Flush in this turn when every request in flight is waiting or committing, else within GATHER_S."""
        if self.n_waiting + self.committing >= in_flight:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if not self.scheduled:
                self.scheduled = True
                loop.call_soon(self._flush)  # after every request that is ready in this turn
        elif not self.scheduled and self.timer is None:
            self.timer = loop.call_later(GATHER_S, self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for key in list(self.waiting):
            items = self.waiting[key]
            if self.redis is None:  # blocking: each enqueue ends before the next begins
                del self.waiting[key]
                self.n_waiting -= len(items)
                while items:
                    batch, items = _first_batch(items)
                    self._answer(batch, self._commit(batch))
                continue
            if key[1] in self.out:
                continue  # its commit out flushes them when it ends
            batch, rest = _first_batch(items)
            if rest:
                self.waiting[key] = rest
            else:
                del self.waiting[key]
            self.n_waiting -= len(batch)
            self._start(key, batch)

    def _start(self, key: tuple[int, str], batch: list[Item]) -> None:
        self.out.add(key[1])
        self.running += 1
        self.committing += len(batch)
        task = asyncio.get_running_loop().create_task(self._commit_async(batch, self.redis))
        self.tasks.add(task)  # held until done: the loop keeps only a weak reference to a task
        # Answered and counted when the task ends, however it ends (cancelled before it ran, too).
        task.add_done_callback(lambda done: self._ended(key, batch, done))

    @staticmethod
    def _commit(batch: list[Item]) -> Answer:
        collector, first, _ = batch[0]
        try:
            return collector.queue_many(first.integration, [p for _, p, _ in batch])  # 503s, not raises
        except Exception as exc:  # never leave a request waiting: a bug answers 503 (the SDK tries again)
            log.error("could not queue %d requests, answered 503: %s", len(batch), type(exc).__name__)
            return UNAVAILABLE

    @staticmethod
    async def _commit_async(batch: list[Item], client: Any) -> Answer:
        collector, first, _ = batch[0]
        return await collector.queue_many_async(first.integration, [p for _, p, _ in batch], client)

    def _ended(self, key: tuple[int, str], batch: list[Item], task: asyncio.Task[Answer]) -> None:
        self.tasks.discard(task)
        self.running -= 1
        self.committing -= len(batch)
        self.out.discard(key[1])
        answer = UNAVAILABLE  # cancelled (the app stopping) or a bug: the SDK tries again
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                answer = task.result()
            else:  # never leave a request waiting
                log.error("could not queue %d requests, answered 503: %s", len(batch), type(exc).__name__)
        self._answer(batch, answer)
        if self.n_waiting:  # those still being read join them, within GATHER_S
            self._soon(asyncio.get_running_loop(), self.in_flight[0] - len(batch))

    @staticmethod
    def _answer(batch: list[Item], answer: Answer) -> None:
        for _, _, done in batch:
            if not done.done():
                done.set_result(answer)


def _first_batch(items: list[Item]) -> tuple[list[Item], list[Item]]:
    """The requests at the head of ``items`` that go in one enqueue (CHUNK events at most, one request at
    least), and the rest."""
    size = 0
    for n, item in enumerate(items):
        size += len(item[1].events)
        if n and size > CHUNK:
            return items[:n], items[n:]
    return items, []


def _with_cors(answer: Answer, headers: dict[str, str], collector: Collector) -> Answer:
    """A 401 before the body is read: readable by a page on an allowed origin (its SDK logs the reason)."""
    origin = headers.get("origin")
    if origin is not None and origin_allowed_anywhere(origin, collector.settings.integrations):
        answer = Answer(answer.status, answer.body, {**answer.headers, **cors_headers(origin)})
    return answer


def app_factory() -> Any:
    """For ``uvicorn --factory``: each worker process builds its app from the environment."""
    return create_app(tune_gc=True)
