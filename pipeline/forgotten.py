"""The Redis calls of forgetting a user (see :mod:`pipeline.forget`): the suppression list every enqueue
checks, the bounded steps that remove a user's copies from each place an integration keeps records, and
the forget requests themselves (``P:{forget}:*``, one slot). The :class:`~pipeline.store.Store` has them;
they live here so that store.py stays the delivery side."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis

#: forget_message.lua as EVAL sends it to the broker (no shebang: the broker may be another Redis version;
#: no include to expand).
_MESSAGE_SCRIPT = resources.files("pipeline").joinpath("lua/forget_message.lua").read_text("utf-8")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


#: How long a process trusts its copy of an integration's suppression list before it reads the generation
#: again on its own (an enqueue with an older generation is refused anyway: this only bounds how long a
#: process that never enqueues, such as preview, keeps an old copy).
VIEW_TTL_S = 30.0


class ForgetCalls:
    """Mixed into Store: these need its client ``r``, ``_run``, ``key`` and ``prefix``."""

    r: redis.Redis
    prefix: str

    if TYPE_CHECKING:  # what Store and KeyLayout provide (declared only: never shadowing theirs)

        def drop_dead_letters(self, integration: str, ids: Sequence[str], counter: str = ...) -> int: ...

        def _run(self, script: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any: ...

        def key(self, integration: str, name: str) -> str: ...

        def keys(self, integration: str, *names: str) -> list[str]: ...

        def base(self, integration: str) -> str: ...

        def _now_ms(self) -> int: ...

    # ------------------------------------------------------------------------------ the suppression list

    def forgotten_view(self, integration: str, refresh: bool = False) -> tuple[str, dict[str, int]]:
        """(generation, digest -> ms it is suppressed until) of the integration's suppression list, as this
        process last read it (read again with ``refresh``, or when older than VIEW_TTL_S). Every enqueue
        carries the generation: one made with an older view is refused and made again with a new one."""
        views: dict[str, tuple[float, str, dict[str, int]]] = self.__dict__.setdefault("_forgotten_views", {})
        seen = views.get(integration)
        if seen is not None and not refresh and time.monotonic() - seen[0] < VIEW_TTL_S:
            return seen[1], seen[2]
        gen = self.r.get(self.key(integration, "forgotten:gen"))  # first: the list read after it is as new
        digests: dict[str, int] = {}
        cursor = 0
        while True:  # a page at a time: the list may hold many (each call stays short)
            cursor, raw = cast(
                tuple[int, dict[bytes, bytes]],
                self.r.hscan(self.key(integration, "forgotten"), cursor, count=1000),
            )
            digests.update((_s(k), int(v)) for k, v in raw.items())
            if int(cursor) == 0:
                break
        views[integration] = (time.monotonic(), _s(gen) if gen else "0", digests)
        return views[integration][1], digests

    def suppress(self, integration: str, digests: Sequence[str], until_ms: int) -> int:
        """Suppress events naming these digests until ``until_ms``; returns the list's new generation."""
        keys = self.keys(integration, "forgotten", "forgotten:gen", "forgotten:until")
        gen = int(self._run("forget_suppress", keys, [until_ms, *digests]))
        self.forgotten_view(integration, refresh=True)
        return gen

    # ---------------------------------------------------------------------------- removing the copies

    def forget_pending_step(
        self, integration: str, position: int, step: int, wanted: Sequence[str], lane: str | None = None
    ) -> tuple[int, bool, list[bytes]]:
        """One bounded step over pending (or, with ``lane``, that import's backfill lane) from absolute
        ``position``: (next position, end reached, records removed). ``wanted``: the forgotten values as
        pipeline.forget.wanted_of writes them."""
        keys = self.keys(integration, "pending", "flow", "stats")
        if lane is not None:  # the lane's hash counts what was cut from it as flow does for pending
            keys[:2] = self.keys(integration, f"import:{lane}:records", f"import:{lane}")
        res = cast(list[Any], self._run("forget_pending", keys, [position, step, orjson.dumps(list(wanted))]))
        return int(res[0]), bool(int(res[1])), [bytes(x) for x in res[2:]]

    def batch_ids(self, integration: str) -> list[str]:
        """Every open and held batch of the integration."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrange(self.key(integration, "open"), 0, -1)
        pipe.zrange(self.key(integration, "held"), 0, -1)
        open_, held = pipe.execute()
        return [_s(b) for b in (*open_, *held)]

    def forget_in_batch(
        self, integration: str, bid: str, wanted: Sequence[str]
    ) -> tuple[int, bool, list[bytes]]:
        """Rewrite one batch without the records naming a forgotten value: (records removed, -1 when the
        batch is gone; whether it was leased, being sent; the records removed)."""
        keys = self.keys(integration, "open", "held", "stats")
        args = [self.base(integration), bid, orjson.dumps(list(wanted))]
        res = cast(list[Any], self._run("forget_batch", keys, args))
        if int(res[0]) < 0:
            return -1, False, []
        return int(res[0]), bool(int(res[1])), [bytes(x) for x in res[2:]]

    def batch_leased(self, integration: str, bid: str) -> bool:
        return bool(self.r.exists(self.key(integration, f"lease:{bid}")))

    def scan_hash(
        self, integration: str, name: str, cursor: int, count: int
    ) -> tuple[int, dict[bytes, bytes]]:
        """One HSCAN step over the integration's hash ``name`` (``dead``, ``ids``)."""
        found = self.r.hscan(self.key(integration, name), cursor, count=count)
        next_cursor, items = cast(tuple[int, dict[bytes, bytes]], found)
        return int(next_cursor), items

    def scan_seen(self, integration: str, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """One ZSCAN step over the de-duplication window's messageIds."""
        found = self.r.zscan(self.key(integration, "seen"), cursor, count=count)
        next_cursor, items = cast(tuple[int, list[tuple[bytes, float]]], found)
        return int(next_cursor), [member for member, _ in items]

    def forget_seen(self, integration: str, members: Sequence[bytes]) -> int:
        """Drop messageIds from the de-duplication window (their events are filtered as forgotten anyway)."""
        return int(self.r.zrem(self.key(integration, "seen"), *members)) if members else 0

    def forget_identities(self, integration: str, user_ids: Sequence[str]) -> int:
        """Drop remembered userId -> email entries."""
        if not user_ids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        pipe.hdel(self.key(integration, "ids"), *user_ids)
        pipe.zrem(self.key(integration, "ids:seen"), *user_ids)
        pipe.hincrby(self.key(integration, "stats"), "forgotten_identities", len(user_ids))
        return int(pipe.execute()[0])

    def forget_held(self, integration: str, visitors: Sequence[str]) -> int:
        """Drop the events held for these visitors (anonymous = "hold")."""
        if not visitors:
            return 0
        keys = self.keys(integration, "anon:idx", "anon:count", "stats")
        return int(self._run("forget_held", keys, [self.base(integration), *visitors]))

    def debug_page(self, integration: str, start: int, count: int) -> list[bytes]:
        return cast(list[bytes], self.r.lrange(self.key(integration, "debug"), start, start + count - 1))

    def forget_debug_entries(self, integration: str, entries: Sequence[bytes]) -> int:
        if not entries:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for entry in entries:
            pipe.lrem(self.key(integration, "debug"), 0, entry)  # type: ignore[arg-type]
        removed = sum(int(n) for n in pipe.execute())
        if removed:
            self.r.hincrby(self.key(integration, "stats"), "forgotten_debugger", removed)
        return removed

    # ------------------------------------------------------------------------------ the requests

    def forget_key(self, name: str) -> str:
        """``P:{forget}:<name>``: the forget requests' keys, all in one slot."""
        return f"{self.prefix}:{{forget}}:{name}"

    def new_request(self, rid: str, fields: dict[str, Any], due: int) -> None:
        """Write a request, its index entry and its place on the sweep's list (due at ``due``), one MULTI."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.forget_key(f"req:{rid}"), mapping=_fields({**fields, "due": due}))
        pipe.zadd(self.forget_key("index"), {rid: self._now_ms()})
        pipe.zadd(self.forget_key("open"), {rid: due})
        pipe.hincrby(self.forget_key("states"), str(fields["state"]), 1)
        pipe.execute()

    def request(self, rid: str) -> dict[str, Any] | None:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.forget_key(f"req:{rid}")))
        if not raw:
            return None
        return {_s(k): orjson.loads(v) for k, v in raw.items()}

    def update_request(
        self,
        rid: str,
        fields: dict[str, Any],
        state: tuple[str, str] | None = None,
        drop: Sequence[str] = (),
        due: int | None = None,
        close: bool = False,
    ) -> None:
        """Write ``fields`` (and remove ``drop``) of a request in one MULTI; ``state`` (from, to) keeps the
        count of requests by state; ``due`` (ms) is when the sweep hands it to a worker next, ``close`` takes
        it off the sweep's list (done, or failed)."""
        key = self.forget_key(f"req:{rid}")
        pipe = self.r.pipeline(transaction=True)
        if due is not None:
            fields = {**fields, "due": due}
            pipe.zadd(self.forget_key("open"), {rid: due})
        if close:
            pipe.zrem(self.forget_key("open"), rid)
        if fields:
            pipe.hset(key, mapping=_fields(fields))
        if drop:
            pipe.hdel(key, *drop)
        if state is not None and state[0] != state[1]:
            pipe.hincrby(self.forget_key("states"), state[0], -1)
            pipe.hincrby(self.forget_key("states"), state[1], 1)
        pipe.execute()

    def due_requests(self, now_ms: int, limit: int = 100) -> list[str]:
        """Unfinished requests due by ``now_ms``, the longest waiting first."""
        ids = self.r.zrangebyscore(self.forget_key("open"), "-inf", now_ms, start=0, num=limit)
        return [_s(x) for x in cast(list[bytes], ids)]

    def dispatched_at(self, rid: str) -> int:
        """When the sweep last handed the request to a worker (ms; 0: never)."""
        raw = self.r.hget(self.forget_key(f"req:{rid}"), "dispatched")
        return int(orjson.loads(cast(bytes, raw))) if raw else 0

    def unfinished_requests(self) -> int:
        return int(self.r.zcard(self.forget_key("open")))

    def delete_slots(self, account: str) -> DeleteSlots:
        """The account's delete slots (delete_concurrency), leases like its upload tokens."""
        return DeleteSlots(self, account)

    def request_ids(self, limit: int = 100, newest_first: bool = True) -> list[str]:
        index = self.forget_key("index")
        ids = self.r.zrevrange(index, 0, limit - 1) if newest_first else self.r.zrange(index, 0, limit - 1)
        return [_s(x) for x in cast(list[bytes], ids)]

    def request_states(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.forget_key("states")))
        return {_s(k): int(v) for k, v in raw.items() if int(v) > 0}

    def count_forget(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.forget_key("stats"), field, n)

    def forget_stats(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.forget_key("stats")))
        return {_s(k): int(v) for k, v in raw.items()}

    def replace_message(self, client: Any, key: str, field: str, old: bytes, new: bytes) -> bool:
        """Replace one of the broker's messages if it is still there as read (forget_message.lua, run on
        the broker's own client)."""
        return bool(client.eval(_MESSAGE_SCRIPT, 1, key, old, new, field))

    def request_lease(self, rid: str, op: str, owner: str, lease_s: float = 0) -> bool:
        """Take, renew or drop the lease on a request (one process works on it at a time)."""
        return bool(
            self._run("forget_lease", [self.forget_key(f"lease:{rid}")], [op, owner, int(lease_s * 1000)])
        )

    def request_leased(self, rid: str) -> bool:
        return bool(self.r.exists(self.forget_key(f"lease:{rid}")))


def _fields(fields: dict[str, Any]) -> Any:
    """A request's fields, each stored as JSON."""
    return {k: orjson.dumps(v) for k, v in fields.items()}


def broker_messages(client: Any, queue_prefix: str, page: int = 200) -> Iterator[tuple[str, str, bytes]]:
    """Every message in Celery's broker (kombu's Redis layout): (key, hash field or '', raw), for each
    queue list whose name starts with ``queue_prefix`` (its priority lists too) and kombu's unacked hash,
    read a page at a time."""
    for key in client.scan_iter(match=f"{queue_prefix}*", count=500, _type="list"):
        name = _s(key)
        for start in itertools.count(0, page):
            items = cast(list[bytes], client.lrange(name, start, start + page - 1))
            yield from ((name, "", item) for item in items)
            if len(items) < page:
                break
    cursor = 0
    while True:
        cursor, found = client.hscan("unacked", cursor, count=page)
        for tag, raw in cast(dict[bytes, bytes], found).items():
            yield "unacked", _s(tag), raw
        if cursor == 0:
            return


class DeleteSlots:
    """A token backend (see pipeline.limiter) on ``P:{acct:<A>}:deletes``: the account's delete requests in
    flight, taken and freed by the same scripts as its upload tokens."""

    def __init__(self, store: Any, account: str) -> None:
        self.store = store
        self.names = [store.account_key(account, n) for n in ("deletes", "deletes:stats", "deletes:limit")]
        self.wake = store.account_key(account, "deletes:wake")

    def acquire(
        self, account: str, limit: int, lease_s: float, token: str, reserve: int = 0
    ) -> tuple[bool, int]:
        args = [limit, int(lease_s * 1000), token, reserve]
        res = cast(list[int], self.store._run("acquire", self.names, args))
        return bool(res[0]), int(res[1])

    def release(self, account: str, token: str, limit: int) -> bool:
        return bool(self.store._run("release", [self.names[0], self.wake], [token, limit]))

    def wait(self, account: str, timeout_s: float) -> None:
        self.store.r.blpop([self.wake], timeout=max(0.01, timeout_s))
