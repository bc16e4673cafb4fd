"""A whole pipeline on one machine: Redis (embedded unless REDIS_URL), optionally the emulator, celery
workers and beat as real processes. Used by ``run``, ``demo``, and the tests that run them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pipeline.emulator import DEMO_ACCOUNT
from pipeline.procs import Child, EmulatorProcess, ProcessGroup, beat_command, worker_command
from pipeline.redis_server import EmbeddedRedis


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    group: ProcessGroup = field(default_factory=ProcessGroup)
    redis: EmbeddedRedis | None = None
    emulator: EmulatorProcess | None = None
    workers: list[Child] = field(default_factory=list)
    beat: Child | None = None

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    def check(self) -> None:
        self.group.check()
        if self.emulator is not None and not self.emulator.alive():
            raise RuntimeError("the emulator exited")

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
) -> Stack:
    """Start everything; on any failure stop what was started and re-raise."""
    env = dict(os.environ if base_env is None else base_env)
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir, env)
    try:
        if not env.get("REDIS_URL"):
            redis_dir = workdir / "redis"
            stack.redis = EmbeddedRedis(appendonly=persistent_redis, workdir=str(redis_dir)).start()
            env["REDIS_URL"] = stack.redis.url
        if emulator_flags is not None:
            stack.emulator = EmulatorProcess(
                *emulator_flags,
                "--record-file", str(workdir / "emulator-records.jsonl"),
                accounts=(f"{env.get('CLEVERTAP_ACCOUNT_ID') or DEMO_ACCOUNT[0]}:"
                          f"{env.get('CLEVERTAP_PASSCODE') or DEMO_ACCOUNT[1]}",),
            )  # fmt: skip
            env.setdefault("CLEVERTAP_ACCOUNT_ID", DEMO_ACCOUNT[0])
            env.setdefault("CLEVERTAP_PASSCODE", DEMO_ACCOUNT[1])
            env.setdefault("CLEVERTAP_REGION", "eu1")
            env["CLEVERTAP_API_URL"] = stack.emulator.url
        for n in range(1, workers + 1):
            stack.workers.append(
                stack.group.start(
                    f"worker{n}",
                    worker_command(f"worker{n}", pool=pool, concurrency=concurrency, loglevel=loglevel),
                    env,
                    workdir / f"worker{n}.log",
                )
            )
        stack.beat = stack.group.start(
            "beat", beat_command(workdir, loglevel=loglevel), env, workdir / "beat.log"
        )
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
