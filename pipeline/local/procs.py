"""Child processes for ``demo``, ``run`` and the end-to-end tests: celery workers and beat, the emulator.

Each child runs in its own session (process group), so stopping it stops its pool children too: SIGTERM
first (Celery's warm shutdown finishes or requeues what it holds), SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import requests


def celery_command(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks", role, *args]


def worker_command(
    name: str, pool: str = "threads", concurrency: int = 16, loglevel: str = "INFO"
) -> list[str]:
    return celery_command(
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--hostname={name}@%h",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    )


def beat_command(schedule: Path, loglevel: str = "INFO") -> list[str]:
    """``celery beat`` keeping its schedule state in the file ``schedule``."""
    return celery_command("beat", f"--schedule={schedule}", "--pidfile=", f"--loglevel={loglevel}")


class Child:
    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> None:
        self.name = name
        self.log_path = log_path
        self.args, self.env = list(args), dict(env)  # to start it again the same way (supervise)
        self.ended_on_purpose = False
        self._log: IO[bytes] | None = open(log_path, "ab") if log_path else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(args),
            env=dict(env),
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group: the crash case, nothing gets to clean up."""
        self.ended_on_purpose = True
        self.signal_group(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def stop(self, grace_s: float = 15.0) -> int | None:
        self.ended_on_purpose = True
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait()
        self.signal_group(signal.SIGKILL)  # pool children that outlived their parent
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ProcessGroup:
    """Children started together and stopped together (in reverse order), whatever happens."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path | None = None
    ) -> Child:
        child = Child(name, args, env, log_path)
        self.children.append(child)
        return child

    def check(self) -> None:
        for child in self.children:
            if not child.alive() and not child.ended_on_purpose:
                tail = ""
                if child.log_path and child.log_path.exists():
                    tail = child.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{child.name} exited with status {child.proc.returncode}\n{tail}")

    def stop(self, grace_s: float = 15.0) -> None:
        for child in reversed(self.children):
            child.stop(grace_s)
        self.children.clear()

    def respawn(self, child: Child) -> Child:
        """Start ``child`` again (it exited): same command, environment and log, in its place."""
        child._close()
        child.ended_on_purpose = True
        again = Child(child.name, child.args, child.env, child.log_path)
        self.children[self.children.index(child)] = again
        return again


class EmulatorProcess:
    """``clevertap-pipeline emulator`` as a real subprocess on a free port."""

    def __init__(
        self, *flags: str, accounts: tuple[str, ...] = ("BENCH-ACCOUNT:bench-passcode",), port: int = 0
    ) -> None:
        args = [sys.executable, "-m", "pipeline", "emulator", "--port", str(port), *flags]
        for account in accounts:
            args += ["--account", account]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().decode()
        if not first.startswith("emulator listening on "):
            self.stop()
            raise RuntimeError(f"emulator did not start: {first!r}")
        self.url = first.split(" on ", 1)[1].strip()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = requests.get(self.url + "/_emulator/stats", timeout=10).json()
        return result

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        terminate(self.proc, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def terminate(proc: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``grace_s``; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def answers(url: str) -> bool:
    """Whether ``url`` answers a GET with 200 now (a server that is up: ``wait_for(lambda: answers(u))``)."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for(
    predicate: object, timeout_s: float, interval_s: float = 0.2, group: ProcessGroup | None = None
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if group is not None:
            group.check()
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return False
