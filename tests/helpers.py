"""What the tests share: one environment builder, events, the emulator's records, and delivering through the
emulator with a recording dispatch instead of Celery. Fixtures are in ``conftest.py``; no test module
imports another."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import requests

from pipeline.config import Settings, load_settings
from pipeline.delivery import Deliverer, SendReport
from pipeline.ingest import IngestResult, ingest
from pipeline.store import Store

ROOT = Path(__file__).resolve().parent.parent
PASSCODE = "s3cret-PASSCODE-value"
#: A Redis URL nothing listens on: for settings that are never used to connect.
NO_REDIS = "redis://127.0.0.1:1/0"
#: The account the delivery tests send as (an emulator accepts it with ``{ACC: PASS}``).
ACC, PASS = "DLV-ACC", "dlv-pass"


def environment(
    redis_url: str | None = NO_REDIS, *, process: bool = False, credentials: bool = True, **extra: Any
) -> dict[str, str]:
    """Settings as environment variables: test credentials for the ``default`` integration (unless
    ``credentials=False``) and ``REDIS_URL``, then ``extra``. ``process=True`` starts from this process's
    environment, less any ``CLEVERTAP_*`` / ``REDIS_URL`` a developer may have set: for a child process."""
    env: dict[str, str] = {}
    if process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"}
    if credentials:
        env.update(CLEVERTAP_ACCOUNT_ID="TEST-ACC-1", CLEVERTAP_PASSCODE=PASSCODE, CLEVERTAP_REGION="eu1")
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args: str, env: dict[str, str], input: bytes | None = None, timeout: float = 60) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


# --------------------------------------------------------------------------------------------- events


def events(n: int, start: int = 0, **props: Any) -> list[dict[str, Any]]:
    """``n`` track events of distinct users, each with a messageId."""
    return [
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": f"u{i}",
            "messageId": f"m{i}",
            "timestamp": 1706540000 + i,
            "properties": {"i": i, **props},
        }
        for i in range(start, start + n)
    ]


def page_events(n: int) -> list[dict[str, Any]]:
    return [
        {"type": "page", "name": "Home", "userId": f"p{i}", "messageId": f"p{i}", "timestamp": 1706540000}
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------ what was stored


def emulator_records(url: str, account: str | None = None) -> list[dict[str, Any]]:
    """Every record the emulator at ``url`` stored (for ``account``, or all), in arrival order."""
    params = {"account": account} if account else None
    body = requests.get(url + "/_emulator/records", params=params, timeout=30).content
    return [orjson.loads(line) for line in body.splitlines()]


def dead_letters(store: Store, integration: str = "default") -> list[dict[str, Any]]:
    ids = store.dead_letter_ids(integration, 0, 1_000_000)
    return [orjson.loads(x) for x in store.dead_letters(integration, ids) if x]


def pending(store: Store, integration: str = "default") -> list[dict[str, Any]]:
    return [orjson.loads(r) for r in store.r.lrange(store.key(integration, "pending"), 0, -1)]


# ------------------------------------------------------------------------------------------- delivery


class Dispatched(list[tuple[str, str, float, int]]):
    """A dispatch that records what would have been published to Celery, and when each is due."""

    def __init__(self) -> None:
        super().__init__()
        self.due: dict[tuple[str, str, float, int], float] = {}

    def __call__(self, integration: str, bid: str, countdown: float, generation: int) -> None:
        message = (integration, bid, countdown, generation)
        self.append(message)
        self.due[message] = time.monotonic() + countdown

    def take(self) -> list[tuple[str, str, float, int]]:
        items = list(self)
        self.clear()
        return items


def drain(d: Deliverer, dispatched: Dispatched, rounds: int = 50) -> list[SendReport]:
    """Run everything dispatched, each when its countdown ends, as a worker would, until nothing is left."""
    reports = []
    for _ in range(rounds):
        work = sorted(dispatched.take(), key=lambda m: dispatched.due.get(m, 0.0))
        if not work:
            break
        for message in work:
            time.sleep(max(0.0, dispatched.due.pop(message, 0.0) - time.monotonic()))
            reports.append(run_message(d, message))
    return reports


def emulator_settings(redis_url: str, emulator_url: str, **extra: Any) -> Settings:
    """Settings for the ``default`` integration sending as ``ACC`` to the emulator at ``emulator_url``."""
    return load_settings(delivery_env(redis_url, emulator_url, **extra))


def delivery_env(redis_url: str, emulator_url: str, **extra: Any) -> dict[str, str]:
    return environment(
        redis_url,
        **{
            "CLEVERTAP_ACCOUNT_ID": ACC,
            "CLEVERTAP_PASSCODE": PASS,
            "CLEVERTAP_API_URL": emulator_url,
            **extra,
        },
    )


@dataclass
class Delivery:
    env: dict[str, str]
    settings: Settings
    deliverer: Deliverer
    dispatched: Dispatched
    ingested: IngestResult | None = None

    def drain(self, rounds: int = 50) -> list[SendReport]:
        return drain(self.deliverer, self.dispatched, rounds)


def deliver_through(
    emulator_url: str,
    redis_url: str,
    store: Store,
    to_send: list[dict[str, Any]],
    *,
    send: bool = True,
    **extra: Any,
) -> Delivery:
    """Ingest ``to_send`` for the emulator at ``emulator_url`` and assemble it into batches; with ``send``,
    deliver it all. Returns what a test needs to go on."""
    env = delivery_env(redis_url, emulator_url, **{"CLEVERTAP_FLUSH_INTERVAL": "0.05", **extra})
    settings = load_settings(env)
    dispatched = Dispatched()
    delivery = Delivery(env, settings, Deliverer(settings, store, dispatched), dispatched)
    delivery.ingested = ingest(to_send, settings=settings, store=store)
    time.sleep(settings.integration("default").flush_interval + 0.01)
    delivery.deliverer.assemble()
    if send:
        delivery.drain()
    return delivery


# ------------------------------------------------------------------------------ misbehaving servers


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free loopback port in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_message(d: Deliverer, message: tuple[str, str, float, int]) -> SendReport:
    """Run one recorded ``send_batch`` message now, whatever its countdown."""
    integration, bid, _, generation = message
    return d.send(integration, bid, generation)
