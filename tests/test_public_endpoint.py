"""The listeners as the public reaches them, over real sockets: a collector process that slow, huge and
vanishing clients cannot lock, fill or flood the log of; a console that limits and logs failed logins; a
metrics exporter that serves concurrent scrapes and lets silent clients go."""

from __future__ import annotations

import base64
import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from pipeline.local.procs import answers, wait_for
from pipeline.local.redis_server import free_port
from tests.helpers import ROOT, environment

KEY = "wk-public-0123456789"


class Served:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, health: str) -> None:
        self.log = log
        with log.open("wb") as out:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", *args], env=env, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=out,
            )  # fmt: skip
        if not wait_for(lambda: answers(health), 30, 0.1):
            self.stop()
            raise AssertionError(log.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def collector(redis_url: str, tmp_path: Path) -> Iterator[tuple[int, Served]]:
    port = free_port()
    env = environment(redis_url, process=True, CLEVERTAP_WRITE_KEY=KEY)
    served = Served(
        ["collect", "--port", str(port)], env, tmp_path / "collector.log", f"http://127.0.0.1:{port}/health"
    )
    yield port, served
    served.stop()


def track(port: int) -> int:
    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    body = {"event": "Signed Up", "userId": "u1", "messageId": f"m-{time.monotonic_ns()}"}
    return requests.post(
        f"http://127.0.0.1:{port}/v1/track", json=body, headers={"authorization": auth}, timeout=5
    ).status_code


def test_slow_clients_do_not_lock_anyone_out_and_are_let_go(collector: tuple[int, Served]) -> None:
    port, _ = collector
    slow = []
    for n in range(300):  # part of a header block each, then nothing (and a few send nothing at all)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if n % 10:
            sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: appli")
        slow.append(sock)
    try:
        assert track(port) == 200  # it was a 503: uvicorn counted the 300 against its limit of 200
        time.sleep(6)  # past the 5 s a header block may take
        closed = 0
        for sock in slow:
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += isinstance(sys.exc_info()[1], ConnectionResetError)
        assert closed == 300  # every one let go; they were all still open 15 s later
        assert track(port) == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_header_block_over_the_cap_is_refused_with_431(collector: tuple[int, Served]) -> None:
    port, _ = collector
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
        try:
            for n in range(64):  # 64 headers of 1 MiB were read in full, +65 MB for one connection
                sock.sendall(f"X-Big-{n}: ".encode() + b"a" * (1 << 20) + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed it after its 431, as it should
        status = sock.recv(64)
    finally:
        sock.close()
    assert status.startswith(b"HTTP/1.1 431"), status
    assert track(port) == 200


def test_an_unfinished_header_line_is_cut_at_the_cap_too(collector: tuple[int, Served]) -> None:
    port, _ = collector
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Big: ")
        started = time.monotonic()
        try:
            for _ in range(64):  # megabytes of one header line, never ended: it was read for 5 s, ~45 MB
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = sock.recv(64)
    finally:
        sock.close()
    assert status.startswith(b"HTTP/1.1 431") and time.monotonic() - started < 3, status


def test_a_big_batch_arriving_with_its_headers_in_one_read_is_not_taken_for_big_headers(
    collector: tuple[int, Served],
) -> None:
    port, _ = collector
    calls = [{"type": "track", "event": "Viewed", "userId": f"u{n}", "messageId": f"one-read-{n}",
              "properties": {"text": "x" * 150}} for n in range(1000)]  # fmt: skip
    body = orjson.dumps({"batch": calls, "writeKey": KEY})
    assert len(body) > 150_000  # far over the 32 KB header cap, all of it in one write
    head = (
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(head.encode() + body)
        status = sock.recv(64)
    finally:
        sock.close()
    assert status.startswith(b"HTTP/1.1 200"), status  # it was a 431 when the body came in the same read


def test_slow_bodies_from_one_client_do_not_lock_out_another_and_are_let_go(
    collector: tuple[int, Served],
) -> None:
    port, _ = collector
    slow = []
    for _ in range(40):  # complete headers, a body that never comes
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.3", 0))
        sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n{")
        slow.append(sock)
    try:
        time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.0.2", 0))
        auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
        conn.request("POST", "/v1/track", b'{"event": "Signed Up", "userId": "u9", "messageId": "slow-1"}',
                     {"Authorization": auth, "Content-Type": "application/json"})  # fmt: skip
        assert conn.getresponse().status == 200  # another address gets in: one holds only its own share
        conn.close()
        time.sleep(10.5)  # past the 10 s a body may take after its headers
        statuses = []
        for sock in slow:
            sock.settimeout(2)
            answered = b""
            while chunk := sock.recv(4096):  # read until the collector closes the connection
                answered += chunk
            statuses.append(answered[9:12])
        # the address's 16 requests in flight are timed out; the others were answered busy at once; all
        # 40 connections are closed (the recv loop ended): none held open
        assert statuses.count(b"408") == 16 and statuses.count(b"503") == 24, statuses
    finally:
        for sock in slow:
            sock.close()


def test_clients_that_hang_up_mid_body_write_at_most_a_short_line_each(collector: tuple[int, Served]) -> None:
    port, served = collector
    before = served.log.read_text().count("\n")
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000\r\n\r\n" + b'{"batch": [' + b" " * 100
        )
        sock.close()
    time.sleep(1)
    assert track(port) == 200
    written = served.log.read_text()
    assert written.count("\n") - before <= 20 and "Traceback" not in written, written[-3000:]


def test_the_console_limits_failed_logins_and_logs_them(redis_url: str, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    port = free_port()
    env = environment(redis_url, process=True, CLEVERTAP_CONSOLE_PASSWORD="a long console password",
                      CLEVERTAP_CONSOLE_KEY=Fernet.generate_key().decode())  # fmt: skip
    served = Served(
        ["console", "--port", str(port)], env, tmp_path / "console.log", f"http://127.0.0.1:{port}/login"
    )
    try:
        session = requests.Session()
        page = session.get(f"http://127.0.0.1:{port}/login", timeout=5).text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        codes = [
            session.post(f"http://127.0.0.1:{port}/login", data={"csrf": csrf, "password": f"guess {n}"},
                         timeout=10, allow_redirects=False).status_code
            for n in range(8)
        ]  # fmt: skip
        assert codes == [401] * 5 + [429] * 3  # it took ~40 guesses a second, and logged none
        right = session.post(
            f"http://127.0.0.1:{port}/login", data={"csrf": csrf, "password": "a long console password"},
            timeout=10, allow_redirects=False,
        )  # fmt: skip
        assert right.status_code == 429  # while the address is blocked, even the right one waits
        log = (tmp_path / "console.log").read_text()
        assert log.count("failed login from 127.0.0.1") == 5 and "a long console password" not in log
    finally:
        served.stop()


def test_the_metrics_exporter_serves_concurrent_scrapes_and_lets_silent_clients_go(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = environment(redis_url, process=True)
    url = f"http://127.0.0.1:{port}/metrics"
    served = Served(["metrics", "--port", str(port)], env, tmp_path / "metrics.log", url)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    try:
        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda _: requests.get(url, timeout=30).status_code, range(64)))
        assert set(codes) <= {200, 503} and codes.count(200) >= 8, codes  # never a 500
        time.sleep(11)  # past the 10 s a scrape's request may take
        for sock in silent:
            sock.settimeout(2)
            assert sock.recv(1) == b""  # let go (a thread each was held for ever)
        assert requests.get(url, timeout=10).status_code == 200
    finally:
        for sock in silent:
            sock.close()
        served.stop()


def test_a_pipelined_request_waiting_its_turn_is_not_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its body's deadline starts when it is taken up (uvicorn reads nothing more while the one before it is
    answered), so a slow first answer never turns into a 408 for the second."""
    import asyncio
    import threading

    import uvicorn

    from pipeline.cli import http as guarded

    monkeypatch.setattr(guarded, "BODY_TIMEOUT_S", 0.5)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":  # answers without reading (a receive would resume uvicorn's reading)
            await asyncio.sleep(1.5)  # three body deadlines
        else:
            while (await receive()).get("more_body"):
                pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=guarded.GuardedHttpToolsProtocol, loop="uvloop",
        lifespan="off", log_level="warning",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 10, 0.05)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
        )
        time.sleep(0.3)
        sock.sendall(b"hello")  # the second's body, while the first is still being answered
        answered = b""
        while answered.count(b"HTTP/1.1 ") < 2:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answered += chunk
        sock.close()
        assert answered.count(b"HTTP/1.1 200") == 2 and b"408" not in answered, answered
    finally:
        server.should_exit = True
        thread.join(10)
