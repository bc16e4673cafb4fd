"""A whole pipeline on one machine: Redis (embedded unless REDIS_URL), optionally the emulator, celery
workers and beat as real processes. Used by ``run``, ``demo``, and the tests that run them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pipeline.config import Settings, load_settings
from pipeline.local.emulator import DEMO_ACCOUNT
from pipeline.local.procs import Child, EmulatorProcess, ProcessGroup, beat_command, worker_command
from pipeline.local.redis_server import EmbeddedRedis

#: ``run`` starts again what exits on its own, unless it exits this many times within this many seconds.
SUPERVISE_MAX = 5
SUPERVISE_WINDOW_S = 60.0


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    group: ProcessGroup = field(default_factory=ProcessGroup)
    redis: EmbeddedRedis | None = None
    emulator: EmulatorProcess | None = None
    workers: list[Child] = field(default_factory=list)
    beat: Child | None = None
    exits: dict[str, list[float]] = field(default_factory=dict)  # when each exited on its own (supervise)

    loglevel: str = "INFO"

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def settings(self) -> Settings:
        """The settings the stack's processes run with."""
        return load_settings(self.env)

    def add_worker(
        self, concurrency: int = 16, pool: str = "threads", name: str | None = None, **env: str
    ) -> Child:
        """Start one more ``celery worker`` process (``env`` on top of the stack's)."""
        name = name or f"worker{len(self.workers) + 1}"
        child = self.group.start(
            name,
            worker_command(name, pool=pool, concurrency=concurrency, loglevel=self.loglevel),
            {**self.env, **env},
            self.workdir / f"{name}.log",
        )
        self.workers.append(child)
        return child

    def start_beat(self, name: str = "beat") -> Child:
        """Start a ``celery beat`` (there should be one; a second is how a mistake looks)."""
        child = self.group.start(
            name,
            beat_command(self.workdir / f"{name}-schedule", loglevel=self.loglevel),
            self.env,
            self.workdir / f"{name}.log",
        )
        if self.beat is None:
            self.beat = child
        return child

    def logs(self, tail: int = 4000) -> str:
        """The end of every process log, for a failing test's message."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )

    def check(self) -> None:
        self.group.check()
        if self.emulator is not None and not self.emulator.alive():
            raise RuntimeError("the emulator exited")

    def supervise(self, now: float | None = None) -> list[str]:
        """Start again what exited on its own, as a process supervisor would (systemd, compose's restart
        policy): a worker, beat, the embedded Redis (from its AOF, on its port). Returns what happened to
        each one started again. One that exits SUPERVISE_MAX times within SUPERVISE_WINDOW_S is a
        RuntimeError with its log's end: something is wrong that starting it again will not fix."""
        now = time.monotonic() if now is None else now
        again: list[str] = []
        if self.redis is not None and (self.redis.proc is None or self.redis.proc.poll() is not None):
            self._count_exit("redis", now)
            self.redis.start()
            again.append("the embedded Redis exited on its own")
        for child in list(self.group.children):
            if child.alive() or child.ended_on_purpose:
                continue
            self._count_exit(child.name, now, child)
            fresh = self.group.respawn(child)
            if child in self.workers:
                self.workers[self.workers.index(child)] = fresh
            if child is self.beat:
                self.beat = fresh
            again.append(f"{child.name} exited on its own (status {child.proc.returncode})")
        if self.emulator is not None and not self.emulator.alive():
            raise RuntimeError("the emulator exited")
        return again

    def _count_exit(self, name: str, now: float, child: Child | None = None) -> None:
        recent = [t for t in self.exits.get(name, []) if now - t < SUPERVISE_WINDOW_S] + [now]
        self.exits[name] = recent
        if len(recent) >= SUPERVISE_MAX:
            tail = ""
            if child is not None and child.log_path and child.log_path.exists():
                tail = "\n" + child.log_path.read_text(errors="replace")[-3000:]
            within = f"{len(recent)} times within {SUPERVISE_WINDOW_S:g} s"
            raise RuntimeError(f"{name} exited {within}; not starting it again{tail}")

    def stop(self) -> None:
        """Beat first (no new work), then workers (warm shutdown: running sends finish, the rest stays in
        Redis for the next start), then the emulator, then Redis (which writes its AOF on the way out)."""
        if self.beat is not None:
            self.beat.stop()
        for worker in self.workers:
            worker.stop(grace_s=30)
        self.group.stop()
        if self.emulator is not None:
            self.emulator.stop()
        if self.redis is not None:
            self.redis.stop()


def start_stack(
    workdir: Path,
    *,
    base_env: Mapping[str, str] | None = None,
    persistent_redis: bool = False,
    emulator_flags: tuple[str, ...] | None = None,
    workers: int = 1,
    pool: str = "threads",
    concurrency: int = 16,
    loglevel: str = "INFO",
    beat: bool = True,
    redis_fsync: str = "everysec",
    redis_port: int | None = None,
    emulator_port: int = 0,
) -> Stack:
    """Start everything (``workers`` workers, and beat unless ``beat=False``), the embedded Redis and the
    emulator on the ports given (None, 0: free ones); on any failure stop what was started and re-raise."""
    env = dict(os.environ if base_env is None else base_env)
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir, env, loglevel=loglevel)
    try:
        if not env.get("REDIS_URL"):
            redis_dir = workdir / "redis"
            stack.redis = EmbeddedRedis(
                redis_port, appendonly=persistent_redis, workdir=str(redis_dir), appendfsync=redis_fsync
            ).start()
            env["REDIS_URL"] = stack.redis.url
        if emulator_flags is not None:
            stack.emulator = EmulatorProcess(
                *emulator_flags,
                "--record-file", str(workdir / "emulator-records.jsonl"),
                accounts=(f"{env.get('CLEVERTAP_ACCOUNT_ID') or DEMO_ACCOUNT[0]}:"
                          f"{env.get('CLEVERTAP_PASSCODE') or DEMO_ACCOUNT[1]}",),
                port=emulator_port,
            )  # fmt: skip
            env.setdefault("CLEVERTAP_ACCOUNT_ID", DEMO_ACCOUNT[0])
            env.setdefault("CLEVERTAP_PASSCODE", DEMO_ACCOUNT[1])
            env.setdefault("CLEVERTAP_REGION", "eu1")
            env["CLEVERTAP_API_URL"] = stack.emulator.url
        for _ in range(workers):
            stack.add_worker(concurrency, pool)
        if beat:
            stack.start_beat()
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so one ``finally`` stops every child on either."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
