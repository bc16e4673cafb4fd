"""The only code that talks to CleverTap: one POST of a prepared body, returned as an :class:`Attempt`.

One pooled ``requests.Session`` per process, made on first use (after a worker forks), with connect and
read timeouts shorter than the token lease. No retries here: retrying is the policy's job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from pipeline.config import IntegrationConfig
from pipeline.policy import Attempt

USER_AGENT = "clevertap-pipeline/0.1"

# The connection each thread's request is using, so a watchdog can cut it at the request's deadline.
_current = threading.local()


def _register(conn: Any) -> None:
    box = getattr(_current, "box", None)
    if box is not None:
        box["conn"] = conn


class _HTTPPool(HTTPConnectionPool):
    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        _register(conn)
        return super()._make_request(conn, *args, **kwargs)


class _HTTPSPool(HTTPSConnectionPool):
    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        _register(conn)
        return super()._make_request(conn, *args, **kwargs)


class _DeadlineAdapter(HTTPAdapter):
    """Pools whose connections a watchdog can find: requests' timeouts bound each socket read, not a whole
    request, so a server trickling bytes could otherwise hold a request past its token's lease."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager


#: While a request has no socket yet (resolving a name, connecting), the watchdog looks again this often.
_RECHECK_S = 0.05


def _cut(box: dict[str, Any]) -> None:
    """At the deadline: shut the request's socket, so any blocked read or write returns at once. A request
    still without a socket is looked at again shortly. Never after the request ended (``done``): its
    connection may be back in the pool, in another request's hands."""
    with box["lock"]:
        if box.get("done"):
            return
        box["fired"] = True
        sock = getattr(box.get("conn"), "sock", None)
        if sock is None:
            again = threading.Timer(_RECHECK_S, _cut, (box,))
            again.daemon = True
            box["timer"] = again
            again.start()
            return
        box["shut"] = True  # a socket: the request was (or was being) sent
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def join_records(records: list[bytes]) -> bytes:
    """The request body: the stored records, joined without decoding or re-encoding them."""
    return b'{"d":[' + b",".join(records) + b"]}"


class UploadClient:
    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int = 32) -> None:
        self.timeout = (connect_timeout, read_timeout)
        #: The whole request, connect to last byte, ends by then: shorter than the token lease (checked in
        #: the settings), so no request outlives its token or its batch's lease.
        self.deadline_s = connect_timeout + read_timeout
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._pid = 0
        self._proxies: dict[str, dict[str, str]] = {}

    @property
    def session(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():  # never share a pool across a fork
            session = requests.Session()
            adapter = _DeadlineAdapter(pool_connections=8, pool_maxsize=self.pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            # requests re-reads proxy settings from the environment on every request (about a sixth of
            # this client's CPU); read the environment once per session and URL instead. Proxies,
            # NO_PROXY and a custom CA bundle work as they would with requests' defaults.
            session.trust_env = False
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            self._session, self._pid, self._proxies = session, os.getpid(), {}
        return self._session

    def proxies_for(self, url: str) -> dict[str, str]:
        proxies = self._proxies.get(url)
        if proxies is None:
            proxies = self._proxies[url] = dict(get_environ_proxies(url))
        return proxies

    def upload(self, config: IntegrationConfig, body: bytes) -> Attempt:
        return self.post(config, config.upload_url, body)

    def delete_profiles(self, config: IntegrationConfig, body: bytes) -> Attempt:
        """CleverTap's Delete User Profile API (``{"identity": [...]}`` or ``{"guid": [...]}``)."""
        return self.post(config, config.delete_url, body)

    def post(self, config: IntegrationConfig, url: str, body: bytes) -> Attempt:
        """POST ``body`` to one of the account's CleverTap endpoints with its headers, under the deadline."""
        headers = {
            "X-CleverTap-Account-Id": config.account_id,
            "X-CleverTap-Passcode": config.passcode.reveal(),
            "Content-Type": "application/json; charset=utf-8",
        }
        started = time.perf_counter()
        box: dict[str, Any] = {"lock": threading.Lock()}
        watchdog = threading.Timer(self.deadline_s, _cut, (box,))
        watchdog.daemon = True
        box["timer"] = watchdog
        _current.box = box
        watchdog.start()
        try:
            session = self.session
            # Never follow a redirect: requests would carry X-CleverTap-Passcode to wherever it points.
            resp = session.post(
                url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                proxies=self.proxies_for(url),
                allow_redirects=False,
            )
            content = resp.content
        except requests.RequestException as exc:
            self._end(box)
            elapsed = time.perf_counter() - started
            if box.get("fired"):
                # cut only if a socket was shut: one that never connected sent nothing CleverTap counts
                error = f"deadline of {self.deadline_s:g} s exceeded"
                return Attempt(None, error=error, elapsed_s=elapsed, cut=bool(box.get("shut")))
            if isinstance(exc, requests.exceptions.ReadTimeout):
                return Attempt(None, error=type(exc).__name__, elapsed_s=elapsed, cut=True)
            if isinstance(exc, requests.exceptions.ProxyError) and " 407 " in str(exc):
                # An HTTPS proxy wanting credentials answers the CONNECT, so no response reaches us: say
                # it as the 407 it is (held, like a 401), not as a network failure to retry for hours.
                return Attempt(407, b"", error="ProxyError", elapsed_s=elapsed)
            # The type says what happened; the message may name the host but never carries headers.
            return Attempt(None, error=type(exc).__name__, elapsed_s=elapsed)
        self._end(box)
        # A complete answer stands even when the deadline fired as it arrived.
        return Attempt(resp.status_code, content, dict(resp.headers), elapsed_s=time.perf_counter() - started)

    @staticmethod
    def _end(box: dict[str, Any]) -> None:
        with box["lock"]:
            box["done"] = True
            box["timer"].cancel()
        _current.box = None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
