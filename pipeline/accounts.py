"""The Redis calls of one CleverTap account, keyed ``P:{acct:<A>}:*`` (see :mod:`pipeline.keys`): its
in-flight tokens (leases, taken and freed by Lua), its adaptive limit, and its request counts. The
:class:`~pipeline.store.Store` has them; they live here so that store.py stays the integrations' side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import redis

from pipeline import constants as C


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AccountCalls:
    """Mixed into Store: these need its client ``r``, ``_run`` and ``account_key``."""

    r: redis.Redis

    if TYPE_CHECKING:  # what Store and KeyLayout provide (declared only: never shadowing theirs)

        def _run(self, script: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any: ...

        def account_key(self, account: str, name: str) -> str: ...

    def acquire_token(
        self, account: str, limit: int, lease_s: float, token: str, reserve: int = 0
    ) -> tuple[bool, int]:
        keys = [self.account_key(account, n) for n in ("tokens", "stats", "limit")]
        res = cast(list[int], self._run("acquire", keys, [limit, int(lease_s * 1000), token, reserve]))
        return bool(res[0]), int(res[1])

    def release_token(self, account: str, token: str, limit: int = C.MAX_CONCURRENCY) -> bool:
        keys = [self.account_key(account, "tokens"), self.account_key(account, "wake")]
        return bool(self._run("release", keys, [token, limit]))

    def adapt_limit(
        self, account: str, configured: int, throttled: bool, cooldown_s: float = 2.0, in_flight: int = 0
    ) -> float:
        """The account's effective limit after an answer (adapt.lua): on a 429 to a request sent as the
        ``in_flight``-th in flight, straight down to one less (15 % down when that is not known), unless a
        request this pipeline cut may still be counted there; back up otherwise (fast to just below the
        last refusal, then slowly probing, more slowly after each probe refused)."""
        args = ["down" if throttled else "up", configured, int(cooldown_s * 1000), in_flight]
        return float(_s(self._run("adapt", [self.account_key(account, "limit")], args)))

    def note_cut_request(self, account: str, configured: int) -> None:
        """Count a request the client cut (it timed out). Its token is kept until its lease ends (CleverTap
        may still count it in flight), so the 429s that follow already allow for it: the limit is left
        alone here, and lowered by a 429 as ever."""
        args = ["cut", configured, 0, 0]
        self._run("adapt", [self.account_key(account, "limit")], args)

    def record_request(self, account: str, status: str, seconds: float) -> None:
        """Count one request to CleverTap by answer and time it, for the metrics exporter (a plain pipeline,
        not a script: metrics need no atomicity, and these keys live in the account's slot)."""
        bucket = next((str(b) for b in C.REQUEST_DURATION_BUCKETS_S if seconds <= b), "+Inf")
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(self.account_key(account, "requests"), status, 1)
        pipe.hincrby(self.account_key(account, "durations"), bucket, 1)
        pipe.hincrbyfloat(self.account_key(account, "durations"), "sum", seconds)
        pipe.execute()

    def request_counts(self, account: str) -> tuple[dict[str, int], dict[str, float]]:
        """(requests by answer, request durations: count per bucket and 'sum') for one account."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.account_key(account, "requests"))
        pipe.hgetall(self.account_key(account, "durations"))
        requests, durations = pipe.execute()
        return (
            {_s(k): int(v) for k, v in requests.items()},
            {_s(k): float(v) for k, v in durations.items()},
        )

    def effective_limit(self, account: str, configured: int) -> float:
        value = self.r.hget(self.account_key(account, "limit"), "effective")
        return min(float(configured), float(_s(value))) if value else float(configured)

    def wait_for_token(self, account: str, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for a release; True when woken (a token may be free: try again)."""
        return self.r.blpop([self.account_key(account, "wake")], timeout=max(0.01, timeout_s)) is not None

    def _now_ms(self) -> int:
        now_s, now_us = self.r.time()
        return int(now_s * 1000 + now_us // 1000)

    def tokens_in_flight(self, account: str) -> int:
        return int(self.r.zcount(self.account_key(account, "tokens"), f"({self._now_ms()}", "+inf"))

    def expire_tokens(self, account: str) -> int:
        return int(self.r.zremrangebyscore(self.account_key(account, "tokens"), "-inf", self._now_ms()))

    def peak_in_flight(self, account: str) -> int:
        value = self.r.hget(self.account_key(account, "stats"), "peak")
        return int(cast(bytes, value)) if value else 0
