"""SDKs nobody here wrote, pointed at a collector started as a real process: segment-analytics-python and
rudder-sdk-python send identify, track, page and screen calls through their own batching (and their own
retries while Redis is down for a few seconds); a real worker and beat deliver to the emulator, and every
event arrives exactly as the Default preset maps it, once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from pipeline.local.procs import answers, wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.runner import Stack, start_stack
from pipeline.store import Store
from tests.helpers import emulator_records, environment

pytestmark = pytest.mark.e2e
ACC, PASS = "SDK-ACC", "sdk-pass"
WRITE_KEY = "wk-sdk-tests-0123456789abcdef"
BASE_TS = 1706540000


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    env = environment(
        None,
        process=True,
        CLEVERTAP_ACCOUNT_ID=ACC,
        CLEVERTAP_PASSCODE=PASS,
        CLEVERTAP_WRITE_KEY=WRITE_KEY,
    )
    # Its own Redis (this test stops it), writing every acknowledged enqueue to disk before answering.
    started = start_stack(
        tmp_path, base_env=env, persistent_redis=True, redis_fsync="always", emulator_flags=(), workers=0,
        beat=False,
    )  # fmt: skip
    port = free_port()
    started.group.start(
        "collector",
        [sys.executable, "-m", "pipeline", "collect", "--port", str(port), "--workers", "2"],
        started.env,
        tmp_path / "collector.log",
    )
    url = f"http://127.0.0.1:{port}"

    assert wait_for(lambda: answers(url + "/health"), 30, 0.2, started.group), started.logs()
    try:
        yield started, url
    finally:
        started.stop()


def at(n: int) -> datetime:
    return datetime.fromtimestamp(BASE_TS + n, tz=UTC)


def send_traffic(client: Any, prefix: str, users: int, expected: list[dict[str, Any]]) -> None:
    """Identify ``users`` users, then track, page and screen calls for each; ``expected`` gets the record
    the Default preset makes of each call."""
    for u in range(users):
        uid, email = f"{prefix}-{u}", f"{prefix}-{u}@example.com"
        client.identify(
            uid,
            {"email": email, "firstName": "Ann", "lastName": f"L{u}", "gender": "female", "plan": "pro"},
            timestamp=at(u),
            message_id=f"{prefix}-id-{u}",
        )
        expected.append(
            {
                "type": "profile",
                "identity": email,
                "ts": BASE_TS + u,
                "profileData": {"Email": email, "Gender": "F", "Name": f"Ann L{u}", "plan": "pro"},
            }
        )
    client.flush()  # identities first: the events below are keyed on the emails they gave
    for u in range(users):
        uid, email = f"{prefix}-{u}", f"{prefix}-{u}@example.com"
        client.track(
            uid, "Product Viewed", {"product_id": f"SKU-{u}", "price": 9.5}, timestamp=at(u),
            message_id=f"{prefix}-pv-{u}",
        )  # fmt: skip
        expected.append(event(email, u, "Product Viewed", {"product_id": f"SKU-{u}", "price": 9.5}))
        client.track(
            uid,
            "Order Completed",
            {
                "order_id": f"O-{prefix}-{u}",
                "revenue": 49.99,
                "currency": "USD",
                "products": [{"product_id": "SKU-A", "quantity": 1}],
            },
            timestamp=at(u),
            message_id=f"{prefix}-oc-{u}",
        )
        expected.append(
            event(
                email, u, "Charged",
                {"Charged ID": f"O-{prefix}-{u}", "Amount": 49.99, "Currency": "USD",
                 "Items": [{"product_id": "SKU-A", "quantity": 1}]},
            )
        )  # fmt: skip
        client.page(
            uid, name="Home", properties={"path": "/"}, timestamp=at(u), message_id=f"{prefix}-pg-{u}"
        )
        expected.append(event(email, u, "Web Page Viewed", {"path": "/", "name": "Home"}))
        client.screen(
            uid, name="Cart", properties={"step": 2}, timestamp=at(u), message_id=f"{prefix}-sc-{u}"
        )
        expected.append(event(email, u, "Screen Viewed", {"step": 2, "name": "Cart"}))


def event(identity: str, u: int, name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "identity": identity, "ts": BASE_TS + u, "evtName": name, "evtData": data}


def canonical(records: list[dict[str, Any]]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


def test_segment_and_rudderstack_sdks_deliver_every_event_exactly_as_mapped(stack: tuple[Stack, str]) -> None:
    started, url = stack
    errors: list[Any] = []
    expected: list[dict[str, Any]] = []
    # segment-analytics-python: JSON bodies, the write key in the body and as HTTP Basic.
    segment = SegmentClient(WRITE_KEY, host=url, on_error=lambda e, batch: errors.append(e), upload_size=100)
    send_traffic(segment, "seg", 300, expected)
    segment.flush()
    segment.shutdown()
    # rudder-sdk-python: gzipped bodies, HTTP Basic. Redis is down for its first 3 s of sending: the
    # collector answers 503 with Retry-After, and the SDK's own retries deliver everything once it is back.
    rudder = RudderClient(WRITE_KEY, host=url, on_error=lambda e, batch: errors.append(e), upload_size=100)
    assert started.redis is not None
    redis_server = started.redis
    redis_server.kill()  # down before the SDK sends (appendfsync always: nothing acknowledged is lost)

    def back_in_3_s() -> None:
        time.sleep(3)
        redis_server.start()

    outage = threading.Thread(target=back_in_3_s)
    outage.start()
    send_traffic(rudder, "rud", 300, expected)
    rudder.flush()
    rudder.shutdown()
    outage.join()
    assert errors == []
    collector_log = (started.workdir / "collector.log").read_text()
    assert "Redis failed, answered 503" in collector_log  # the outage was met, and retried through
    store = Store.from_url(started.redis_url)
    started.add_worker(concurrency=8)
    started.start_beat()
    assert started.emulator is not None
    emulator = started.emulator

    def drained() -> bool:
        return len(emulator_records(emulator.url)) >= len(expected) and store.depth("default")["pending"] == 0

    assert wait_for(drained, 120, 0.5, started.group), started.logs()
    assert canonical(emulator_records(emulator.url)) == canonical(expected)  # each exactly once
    assert store.dead_letter_count("default") == 0
    logs = started.logs(tail=10**7)
    assert WRITE_KEY not in logs and PASS not in logs and "@example.com" not in logs
