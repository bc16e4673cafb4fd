"""The only code that talks to CleverTap: one POST of a prepared body, returned as an :class:`Attempt`.

One pooled ``requests.Session`` per process, made on first use (after a worker forks), with connect and
read timeouts shorter than the token lease. No retries here: retrying is the policy's job.
"""

from __future__ import annotations

import os
import time

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies

from pipeline.config import IntegrationConfig
from pipeline.policy import Attempt

USER_AGENT = "clevertap-pipeline/0.1"


def join_records(records: list[bytes]) -> bytes:
    """The request body: the stored records, joined without decoding or re-encoding them."""
    return b'{"d":[' + b",".join(records) + b"]}"


class UploadClient:
    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int = 32) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._pid = 0
        self._proxies: dict[str, dict[str, str]] = {}

    @property
    def session(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():  # never share a pool across a fork
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=self.pool_size, max_retries=0)
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
        headers = {
            "X-CleverTap-Account-Id": config.account_id,
            "X-CleverTap-Passcode": config.passcode.reveal(),
            "Content-Type": "application/json; charset=utf-8",
        }
        started = time.perf_counter()
        try:
            session = self.session
            url = config.upload_url
            resp = session.post(
                url, data=body, headers=headers, timeout=self.timeout, proxies=self.proxies_for(url)
            )
        except requests.RequestException as exc:
            # The type says what happened; the message may name the host but never carries headers.
            return Attempt(None, error=type(exc).__name__, elapsed_s=time.perf_counter() - started)
        return Attempt(
            resp.status_code, resp.content, dict(resp.headers), elapsed_s=time.perf_counter() - started
        )

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
