"""How the services listen: the HTTP protocol the collector and the console are served with (uvicorn's
httptools protocol, guarded for a public endpoint), and the metrics exporter's bounded WSGI server.

uvicorn (0.54) reads a request's header block for as long as the client likes, as large as it likes, and
counts every open connection, idle or half-sent, against ``limit_concurrency``: 300 clients that send part
of their headers and stop lock everyone else out with 503s. Here:

- a connection must finish each request's header block within HEADER_TIMEOUT_S of opening (or of its
  previous response), else it is closed; and its body within BODY_TIMEOUT_S of being taken up (at once, or
  for a pipelined request once the one before it is answered), else it is answered 408 and closed (one
  timer a request, in the protocol: an ``asyncio.timeout`` around the app's read cost the collector about
  a twentieth of its CPU);
- a header block (request line and headers) over MAX_HEADER_BYTES is answered 431 and the connection
  closed, before more of it is read: the bytes are counted as they arrive, an unfinished line too;
- open connections are capped at MAX_OPEN_CONNECTIONS (past it a new one is closed at once), apart from
  the cap on requests in flight, which the app applies (a 503 with Retry-After): idle and half-sent
  connections cost a few KB each, and no longer use up the requests' limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Seconds a client has to send a request's whole header block.
HEADER_TIMEOUT_S = 5.0
#: Seconds a client has to send a request's body, from the end of its headers.
BODY_TIMEOUT_S = 10.0
#: The largest header block read (request line and every header): SDKs send well under 4 KB.
MAX_HEADER_BYTES = 32 * 1024
#: Open connections one process keeps at most (idle keep-alive ones included).
MAX_OPEN_CONNECTIONS = 4096

log = logging.getLogger("pipeline.http")

_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 39\r\nconnection: close\r\n\r\nthe request's body did not arrive in time"
)
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nthe request's headers are too big"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._tail = b""  # the last bytes read of a header block, to find its end across two reads
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_OPEN_CONNECTIONS:
            self._refused = True
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._body_done()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = 0
        self._tail = b""
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _body_done(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_too_slow(self, cycle: Any) -> None:
        """The body of ``cycle``'s request stalled: a 408 unless its answer has begun, and the connection
        closed (the app, waiting for the body, sees a disconnect and queues nothing). Every request before
        it on the connection was answered before it was taken up."""
        self._body_deadline = None
        if not self.transport.is_closing():
            if not cycle.response_started:
                self.transport.write(_408)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # still in a header block: its bytes count as they arrive (httptools keeps an unfinished header line
        # in its own buffer, unseen by on_header), up to the blank line that ends it (the body may follow in
        # the same read; the end may be split across two reads)
        if self._header_deadline is not None:
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            header_part = len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = seen[-3:] if end < 0 else b""
            if not self._count(header_part):
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # the next request on a kept-alive connection
            self._arm()

    def _count(self, n: int) -> bool:
        """Count ``n`` more bytes of the header block; False (431 sent, closed) past the cap."""
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refused = True
            self._disarm()
            self.transport.write(_431)
            self.transport.close()
            return False
        return True

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # The body's deadline runs from when its request is taken up: a pipelined request waits, unread,
        # for the one before it to be answered (uvicorn pauses reading meanwhile).
        super()._start_asgi_task(cycle, app)
        if cycle.more_body:  # not yet read whole (a request without a body already is)
            self._body_done()
            self._body_deadline = self.loop.call_later(BODY_TIMEOUT_S, self._body_too_slow, cycle)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_done()
        if not self._refused:
            super().on_message_complete()


# ------------------------------------------------------------------------------- the metrics exporter

#: Scrapes served at once by the metrics exporter; past it a 503 at once (Prometheus scrapes one at a
#: time per target: more is a misconfiguration or a flood).
MAX_SCRAPES = 8
#: Seconds a scrape's request may take to arrive, and each write of the answer.
SCRAPE_TIMEOUT_S = 10.0

_503 = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT_S  # a client that connects and says nothing is let go

    def log_message(self, format: str, *args: Any) -> None:  # no access log
        pass


class BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server with a thread a scrape and at most MAX_SCRAPES of them (prometheus_client's
    own keeps a thread per connection, with no timeout)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_SCRAPES)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_503)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def bounded_wsgi_server(host: str, port: int, app: Any) -> BoundedWSGIServer:
    """The metrics exporter's server on host:port (0: a free port), ready for ``serve_forever``."""
    return make_server(host, port, app, server_class=BoundedWSGIServer, handler_class=_QuietHandler)
