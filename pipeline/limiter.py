"""The in-flight limit per CleverTap account: tokens are leases, so a killed holder frees its slot.

The algorithm (wait briefly, never block long, release only what was taken) is kept apart from storage:
:class:`RedisTokens` is the real backend, shared by every worker on every host, with time from Redis
``TIME``; :class:`MemoryTokens` implements the same contract in one process for unit tests.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from pipeline.store import Store


class TokenBackend(Protocol):
    def acquire(
        self, account: str, limit: int, lease_s: float, token: str, reserve: int = 0
    ) -> tuple[bool, int]:
        """Atomically: drop expired leases; if fewer than ``limit`` (less ``reserve``, slots kept for other
        callers) remain, add ``token`` expiring in ``lease_s`` and return ``(True, in flight)``, else
        ``(False, ms until the earliest lease ends)``."""
        ...

    def release(self, account: str, token: str, limit: int) -> bool:
        """Remove ``token`` and wake one waiter; False when it had already expired (or was never held)."""
        ...

    def wait(self, account: str, timeout_s: float) -> None:
        """Block until a token of ``account`` is released, or ``timeout_s`` passes."""
        ...


class RedisTokens:
    def __init__(self, store: Store) -> None:
        self.store = store

    def acquire(
        self, account: str, limit: int, lease_s: float, token: str, reserve: int = 0
    ) -> tuple[bool, int]:
        return self.store.acquire_token(account, limit, lease_s, token, reserve)

    def release(self, account: str, token: str, limit: int) -> bool:
        return self.store.release_token(account, token, limit)

    def wait(self, account: str, timeout_s: float) -> None:
        self.store.wait_for_token(account, timeout_s)


class MemoryTokens:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.released = threading.Condition(self.lock)
        self.leases: dict[str, dict[str, float]] = {}

    def acquire(
        self, account: str, limit: int, lease_s: float, token: str, reserve: int = 0
    ) -> tuple[bool, int]:
        with self.lock:
            now = self.clock()
            held = {t: exp for t, exp in self.leases.get(account, {}).items() if exp > now}
            self.leases[account] = held
            if len(held) >= limit - reserve:
                if not held:
                    return False, 100
                return False, int((min(held.values()) - now) * 1000)
            held[token] = now + lease_s
            return True, len(held)

    def release(self, account: str, token: str, limit: int) -> bool:
        with self.lock:
            removed = self.leases.get(account, {}).pop(token, None) is not None
            if removed:
                self.released.notify()
            return removed

    def wait(self, account: str, timeout_s: float) -> None:
        with self.lock:
            self.released.wait(timeout_s)


#: A waiter re-checks at least this often, so a lease that expired (no release, no wake-up) is noticed.
RECHECK_S = 0.25


class Limiter:
    def __init__(self, backend: TokenBackend) -> None:
        self.backend = backend

    def acquire(
        self, account: str, limit: int, lease_s: float, wait_s: float = 0.5, reserve: int = 0
    ) -> str | None:
        """A token held for ``account`` (its id, to :meth:`release`), or None after ``wait_s`` without one:
        the caller then gives its work back with a short countdown instead of blocking a worker. Waiting
        blocks on the backend's release signal, so waiters cost nothing while slots are busy. A token never
        released ends with its lease."""
        return self.acquire_counted(account, limit, lease_s, wait_s, reserve)[0]

    def acquire_counted(
        self, account: str, limit: int, lease_s: float, wait_s: float = 0.5, reserve: int = 0
    ) -> tuple[str | None, int]:
        """:meth:`acquire`, with how many tokens of the account were held with this one (0 without one):
        a 429 on its request says the account had fewer slots than that for this pipeline."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait_s
        while True:
            acquired, n = self.backend.acquire(account, limit, lease_s, token, reserve)
            remaining = deadline - time.monotonic()
            if acquired:
                return token, n
            if remaining <= 0:
                return None, 0
            self.backend.wait(account, min(remaining, RECHECK_S))

    def release(self, account: str, token: str, limit: int) -> bool:
        """Give ``token`` back and wake a waiter; False when its lease had already ended."""
        return self.backend.release(account, token, limit)

    @contextmanager
    def token(self, account: str, limit: int, lease_s: float, wait_s: float = 0.5) -> Iterator[bool]:
        """Yield True holding a token (released on exit, whatever happens), or False after ``wait_s`` without
        one (:meth:`acquire`)."""
        token = self.acquire(account, limit, lease_s, wait_s)
        try:
            yield token is not None
        finally:
            if token is not None:
                self.release(account, token, limit)
