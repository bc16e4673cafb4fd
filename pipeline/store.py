"""All Redis access: the calls into the Lua scripts of ``pipeline/lua/``, on the keys of
:mod:`pipeline.keys` (the key layout, in one table).

Records are orjson output, which never holds a raw newline (JSON escapes it inside strings), so a newline
is a safe separator: a batch is one string, read with one GET and turned into a request body with one
``replace``, instead of a thousand list elements parsed one by one on every send.

Every move of a record between pending, a batch, the dead letters and the delivered counter is one Lua
script (``pipeline/lua/<name>.lua``, each naming its KEYS and ARGV on its first lines), so a record is
always in exactly one place. Times used for leases, due times and the
de-duplication window come from Redis ``TIME``: every host shares that one clock.
"""

from __future__ import annotations

import enum
import itertools
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, cast

import hiredis
import orjson
import redis
from redis.cluster import RedisCluster

from pipeline import constants as C
from pipeline.accounts import AccountCalls
from pipeline.backfill import BackfillCalls
from pipeline.errors import QueueFull
from pipeline.forgotten import ForgetCalls
from pipeline.keys import KeyLayout
from pipeline.policy import BatchHistory, RetryKind

#: The store is away for now (down, restarting and loading its data, failing over, or a cluster moving
#: slots), not refusing what was asked: worth trying again shortly. A call that failed this way may or may
#: not have run, so only a step that is safe to repeat is tried again.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # BusyLoadingError too (restarted, loading its AOF)
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a primary demoted in a failover
    redis.exceptions.ClusterDownError,  # MasterDownError too
    redis.exceptions.TryAgainError,
)


def client_for(url: str, cluster: bool = False, **options: Any) -> Any:
    """A client for ``url``: redis-py's cluster client with ``cluster`` (any node; it finds the rest)."""
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def server_version(client: Any) -> tuple[int, ...]:
    """The Redis version of ``client``'s server (on a cluster, of the node it asks: one for all)."""
    info = client.info("server")
    text = str(info.get("redis_version", "0")) if isinstance(info, dict) else "0"
    return tuple(int(x) for x in text.split(".")[:2] if x.isdigit())


class NotReplicated(redis.exceptions.TimeoutError):
    """Fewer replicas than redis_wait_replicas have a write: refused before writing when the primary has
    too few connected, else written to the primary but not confirmed in time (a failover now could lose
    it). A transient failure: the collector answers 503 and the SDK sends it again (de-duplicated by its
    messageId when the first write survived), the ingest task retries."""


def _replicated(acked: int, wanted: int) -> None:
    if acked < wanted:
        raise NotReplicated(
            f"written to the primary, but {acked} of the {wanted} replicas redis_wait_replicas asks for "
            f"confirmed it within {C.WAIT_TIMEOUT_MS} ms"
        )


#: Scripts that add records: on Redis 7 or newer they are refused while Redis is past maxmemory (the caller
#: answers 503 and keeps the events); every other script runs even then (allow-oom), so delivery drains.
_GROWING = {"enqueue", "replay_records", "import_push"}


def script_text(name: str, modern: bool) -> str:
    """A script's text for the server: with ``modern`` (Redis 7 or newer) a shebang line first, so the server
    checks that every key it touches is in the declared keys' slot; Redis 6.2 takes no shebang."""
    if not modern:
        return SCRIPTS[name]
    return ("#!lua\n" if name in _GROWING else "#!lua flags=allow-oom\n") + SCRIPTS[name]


def _lua(path: str) -> str:
    """A script's text, with each ``--! include NAME`` line replaced by ``pipeline/lua/lib/NAME.lua``."""
    text = resources.files("pipeline").joinpath(f"lua/{path}.lua").read_text("utf-8")
    return re.sub(r"^--! include (\w+)$", lambda m: _lua(f"lib/{m.group(1)}"), text, flags=re.MULTILINE)


#: Every Lua script, by name: ``pipeline/lua/<name>.lua``, read once at import (each names its KEYS and
#: ARGV as locals on its first lines, and says what it returns).
SCRIPTS: dict[str, str] = {
    name: _lua(name)
    for name in (
        "enqueue", "assemble", "lease", "unlease", "finish", "retry", "hold", "split", "sweep", "acquire",
        "release", "adapt", "replay_records", "unlock", "drop_dead", "dead_page", "forget_pending",
        "forget_batch", "forget_held", "forget_suppress", "forget_lease", "forget_message",
        "assemble_backfill", "import_begin", "import_push", "import_end", "import_cancel",
    )
}  # fmt: skip


class LeaseStatus(enum.StrEnum):
    """What taking a batch's lease found."""

    OK = "ok"  # leased: this worker sends it
    GONE = "gone"  # no longer open: finished, or held
    LEASED = "leased"  # another worker is sending it
    HELD = "held"  # the integration fails authentication: moved to the held set
    STALE = "stale"  # the message's dispatch generation is not the batch's: another message is live
    EARLY = "early"  # the live message arrived before the batch is due: give it back until then


_seq = itertools.count()


def new_id() -> str:
    """Unique across hosts (pid and random parts) and, within a process, sorted in the order made."""
    seq = next(_seq) % 1_000_000
    return f"{int(time.time() * 1000):013d}-{seq:06d}-{os.getpid() % 100000:05d}{secrets.token_hex(3)}"


_KIND = re.compile(rb'^{"id":"[^"]*","kind":"([^"]*)"')


def kind_of(body: bytes) -> str | None:
    """The kind written into a dead-letter entry, read as lib/dead.lua's ``kind_of`` reads it (for the one
    write that is not a script: :meth:`Store.keep_unqueued`)."""
    m = _KIND.match(body)
    return m.group(1).decode() if m else None


@dataclass(frozen=True)
class LeaseResult:
    """What taking a batch's lease found; with OK, the batch's history so far (what the retry policy
    decides on), with EARLY, when it is due."""

    status: LeaseStatus
    now_ms: int
    history: BatchHistory | None = None  # with OK
    due_ms: int = 0  # with EARLY


@dataclass
class Hold:
    """What one enqueue holds and releases for anonymous = "hold" (``anon:*`` keys): ``held`` (visitor key,
    entry, the mapping dead letter a replayed one replaces or '') to hold, up to ``limit`` in the
    integration; ``claims`` (visitor key, first entry, last entry,
    count) of held events released, each only if the visitor's held events still start and end so (no
    other enqueue took them meanwhile); ``group_claims``, per queued group, the visitor key whose held
    event it is ('' for the others). After the enqueue, ``full``: events not held, the hold being full."""

    held: list[tuple[str, bytes, str]] = field(
        default_factory=list
    )  # (visitor, entry, dead letter it replaces)
    claims: list[tuple[str, bytes, bytes, int]] = field(default_factory=list)
    group_claims: list[str] = field(default_factory=list)
    limit: int = 0
    full: int = 0

    def args(self, base: str) -> list[Any]:
        return [
            orjson.dumps([[v, e.decode(), rep] for v, e, rep in self.held]),
            orjson.dumps([[v, a.decode(), b.decode(), n] for v, a, b, n in self.claims]),
            orjson.dumps(self.group_claims if any(self.group_claims) else []),
            self.limit,
            C.MAX_HELD_PER_VISITOR,
            base,
        ]


@dataclass(frozen=True)
class KnownEmails:
    """Ask: the emails remembered for these userIds (one HMGET)."""

    integration: str
    user_ids: list[str]


@dataclass(frozen=True)
class HeldEvents:
    """Ask: the events held for these visitors, oldest first (one pipeline of LRANGEs)."""

    integration: str
    visitors: list[str]


@dataclass(frozen=True)
class FieldsDropped:
    """Ask: count the profile values left out of queued records, in all and by key (one pipeline)."""

    integration: str
    by_key: dict[str, int]


@dataclass(frozen=True)
class Enqueue:
    """Ask: one enqueue, made (:meth:`Store.enqueue_call`) and not yet sent: one EVALSHA (on a cluster, the
    ready set's SADD after it). :meth:`Store.enqueue_answer` reads what it came to."""

    integration: str
    keys: list[str]
    args: list[Any]
    high_water: int
    hold: Hold | None


#: What an ingest asks of Redis, one round trip each: answered by :meth:`Store.run` on this store's own
#: (blocking) client, or by :meth:`Store.run_async` on an asyncio one (the collector's event loop), with the
#: same keys, arguments and reading of the answer.
Ask = KnownEmails | HeldEvents | FieldsDropped | Enqueue


@dataclass(frozen=True)
class SweepResult:
    open: int
    held: int
    pending: int
    probe: tuple[str, int] | None  # (batch id, dispatch generation)
    redispatch: list[tuple[str, int]]


#: An event-debugger entry (JSON) and how many entries the integration keeps; None: the debugger is off.
Debug = tuple[bytes, int] | None


def _debug(debug: Debug) -> list[Any]:
    return [debug[0], debug[1]] if debug and debug[1] > 0 else ["", 0]


def _pairs(items: Sequence[Any]) -> list[tuple[str, int]]:
    return [(_s(items[i]), int(items[i + 1])) for i in range(0, len(items), 2)]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StaleForgotten(Exception):
    """An enqueue or replay was filtered with an older view of the integration's suppression list (a user
    was forgotten meanwhile): nothing was written; filter again with the list as it is now."""


class Store(AccountCalls, ForgetCalls, BackfillCalls, KeyLayout):
    """Redis operations of the pipeline. One instance per process (:meth:`shared`); it holds a connection
    pool. Every method that takes ``integration`` takes the integration's name."""

    _shared: ClassVar[dict[tuple[int, str, str, bool, int], Store]] = {}

    def __init__(self, client: Any, prefix: str = C.DEFAULT_KEY_PREFIX, wait_replicas: int = 0) -> None:
        """``client``: a ``redis.Redis``, or a ``redis.cluster.RedisCluster`` (every script and MULTI here
        touches one slot). ``wait_replicas``: what ingest and the collector wait for (see _then_ready)."""
        super().__init__(prefix)
        self.r = client
        self.cluster = isinstance(client, RedisCluster)
        self.wait_replicas = wait_replicas
        self._replicas_seen: dict[str, tuple[float, int]] = {}  # primary -> (when read, replicas connected)
        self._registered: dict[str, Any] | None = None
        #: an integration's enqueue keys that are the same in every call (Store.enqueue_call)
        self._enqueue_keys: dict[str, tuple[list[str], list[str], list[str]]] = {}

    @property
    def _scripts(self) -> dict[str, Any]:
        """The scripts, registered on first use in the text the server takes: on Redis 7 or newer with a
        shebang line (flags: see script_text), so a key outside the declared keys' slot is an error on a
        cluster, not a success on a node that happens to hold both."""
        if self._registered is None:
            modern = server_version(self.r) >= (7, 0)
            self._registered = {name: self.r.register_script(script_text(name, modern)) for name in SCRIPTS}
        return self._registered

    @classmethod
    def from_url(
        cls, url: str, prefix: str = C.DEFAULT_KEY_PREFIX, cluster: bool = False, wait_replicas: int = 0
    ) -> Store:
        """A new store with a pool of its own (with ``cluster``, redis-py's cluster client on ``url``)."""
        return cls(client_for(url, cluster, health_check_interval=30), prefix, wait_replicas)

    @classmethod
    def shared(
        cls, url: str, prefix: str = C.DEFAULT_KEY_PREFIX, cluster: bool = False, wait_replicas: int = 0
    ) -> Store:
        """This process's store for ``url`` and ``prefix``, made on first use: one connection pool per
        process, never inherited across a fork (a forked child makes its own)."""
        key = (os.getpid(), url, prefix, cluster, wait_replicas)
        store = cls._shared.get(key)
        if store is None:
            store = cls._shared[key] = cls.from_url(url, prefix, cluster, wait_replicas)
        return store

    @classmethod
    def for_settings(cls, settings: Any) -> Store:
        """This process's store for ``settings`` (its Redis settings and key prefix)."""
        return cls.shared(
            settings.redis_url, settings.key_prefix, settings.redis_cluster, settings.redis_wait_replicas
        )

    @classmethod
    def forget_shared(cls) -> None:
        """Close and forget this process's shared stores (tests; a worker never needs it)."""
        for store in cls._shared.values():
            store.r.close()
        cls._shared.clear()

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any:
        return self._scripts[script](keys=list(keys), args=list(args), client=client)

    def _then_ready(self, script: str, keys: Sequence[str], args: Sequence[Any], integration: str) -> Any:
        """Run a script that queues records and mark the integration ready, in one round trip (on a
        cluster, two: the ready set is a slot of its own). EVALSHA goes into the pipeline as it is: redis-py
        precedes every pipeline holding a Script with SCRIPT EXISTS, a round trip more on each (the
        collector's one-event requests spent a third of their Redis time on it). A NOSCRIPT (Redis
        restarted or failed over: its script cache is empty) loads the script and sends it again: it did
        not run, and SADD twice changes nothing. With ``wait_replicas``, WAIT follows on the same
        connection, and fewer replicas than that within WAIT_TIMEOUT_MS raise :class:`NotReplicated`."""
        if self.cluster:
            if self.wait_replicas:
                result = self._on_own_node(script, keys, args)
            else:
                result = self._run(script, keys, args)
            self.r.sadd(self.ready_key, integration)
            return result
        sha = self._scripts[script].sha
        if self.wait_replicas:
            self._enough_replicas(self.r, "primary")
        for attempt in (1, 2):
            pipe = self.r.pipeline(transaction=False)
            pipe.evalsha(sha, len(keys), *keys, *args)
            pipe.sadd(self.ready_key, integration)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, C.WAIT_TIMEOUT_MS)  # type: ignore[no-untyped-call]
            try:
                answers = pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.r.script_load(self._scripts[script].script)
                continue
            if self.wait_replicas:
                _replicated(int(answers[2]), self.wait_replicas)
            return answers[0]
        raise AssertionError("unreachable")

    def run(self, ask: Ask) -> Any:
        """Answer an ingest's ask on this store's own client."""
        if isinstance(ask, KnownEmails):
            return self.known_emails(ask.integration, ask.user_ids)
        if isinstance(ask, HeldEvents):
            return self.held_events(ask.integration, ask.visitors)
        if isinstance(ask, FieldsDropped):
            return self.count_fields_dropped(ask.integration, ask.by_key)
        if self.cluster or self.wait_replicas:
            return self.enqueue_answer(ask, self._then_ready("enqueue", ask.keys, ask.args, ask.integration))
        return self.enqueue_answer(ask, self._run("enqueue", ask.keys, ask.args))

    async def run_async(self, client: Any, ask: Ask) -> Any:
        """Answer an ingest's ask on ``client``, a ``redis.asyncio`` client for this store's (single, not
        cluster) Redis: the event loop serves other requests while Redis works. The same round trips as
        :meth:`run`: the enqueue script (which marks the integration ready itself), WAIT after it on the
        same connection with ``wait_replicas``; a NOSCRIPT loads the script and sends it again."""
        if self.cluster:
            raise TypeError("a cluster store answers with its own client (Store.run)")
        if isinstance(ask, KnownEmails):
            if not ask.user_ids:
                return {}
            return _emails(ask.user_ids, await client.hmget(self.key(ask.integration, "ids"), ask.user_ids))
        if isinstance(ask, HeldEvents):
            if not ask.visitors:
                return {}
            pipe = client.pipeline(transaction=False)
            for visitor in ask.visitors:
                pipe.lrange(self.key(ask.integration, f"anon:{visitor}"), 0, C.MAX_HELD_PER_VISITOR - 1)
            return _held(ask.visitors, await pipe.execute())
        if isinstance(ask, FieldsDropped):
            pipe = client.pipeline(transaction=False)
            for command in self._fields_dropped(ask.integration, ask.by_key):
                pipe.hincrby(*command)
            return await pipe.execute()
        found = self._scripts["enqueue"]
        if not self.wait_replicas:  # the script marks the integration ready itself (enqueue_call)
            try:
                return self.enqueue_answer(ask, await _evalsha(client, found.sha, ask.keys, ask.args))
            except redis.exceptions.NoScriptError:  # Redis restarted or failed over: it did not run
                await client.script_load(found.script)
                return self.enqueue_answer(ask, await _evalsha(client, found.sha, ask.keys, ask.args))
        self._enough_replicas(self.r, "primary")  # read at most once a second
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(found.sha, len(ask.keys), *ask.keys, *ask.args)
            pipe.execute_command("WAIT", self.wait_replicas, C.WAIT_TIMEOUT_MS)
            try:
                answers = await pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                await client.script_load(found.script)
                continue
            _replicated(int(answers[1]), self.wait_replicas)
            return self.enqueue_answer(ask, answers[0])
        raise AssertionError("unreachable")

    def _on_own_node(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """On a cluster with ``wait_replicas``: the script and WAIT on one connection to the primary that
        holds the keys' slot (redis-py's cluster client would send WAIT elsewhere). After a MOVED or ASK (a
        resharding), or a primary that does not answer (a failover), the slot map is read again and the call
        sent again: the enqueue's call id makes a second run answer what the first did."""
        found, cluster = self._scripts[script], cast(Any, self.r)
        for attempt in range(4):
            try:
                node = cluster.get_node_from_key(keys[0])
                if node is None:  # mid-failover the slot map may name no primary for the slot
                    raise redis.exceptions.ClusterDownError("no primary for the slot yet")
                client = cluster.get_redis_connection(node)
                self._enough_replicas(client, node.name)
                pipe = client.pipeline(transaction=False)
                pipe.evalsha(found.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", self.wait_replicas, C.WAIT_TIMEOUT_MS)
                result, acked = pipe.execute()
            except redis.exceptions.NoScriptError:  # a promoted replica has no scripts: it did not run
                client.script_load(found.script)
                continue
            except NotReplicated:
                raise
            except (
                redis.exceptions.AskError,  # MovedError too
                redis.exceptions.ClusterDownError,
                redis.exceptions.SlotNotCoveredError,
                redis.ConnectionError,
                redis.TimeoutError,
            ):
                if attempt == 3:
                    raise
                time.sleep(0.1 * (attempt + 1))
                cluster.nodes_manager.initialize()  # where the slot is now
                continue
            _replicated(int(acked), self.wait_replicas)
            return result
        raise redis.exceptions.ClusterDownError("the keys' slot kept moving; try again")

    def _enough_replicas(self, client: Any, where: str) -> None:
        """Refuse before writing when the primary has fewer replicas connected than ``wait_replicas`` (after
        a failover, until the failed node rejoins): a write WAIT cannot confirm would be answered 503 and
        sent again. Each primary's count is read at most once a second."""
        now = time.monotonic()
        seen = self._replicas_seen.get(where)
        if seen is None or now - seen[0] > 1.0:
            connected = int(cast(dict[str, Any], client.info("replication")).get("connected_slaves", 0))
            seen = self._replicas_seen[where] = (now, connected)
        if seen[1] < self.wait_replicas:
            raise NotReplicated(
                f"the primary has {seen[1]} of the {self.wait_replicas} replicas redis_wait_replicas asks "
                "for: nothing was written"
            )

    def time_of(self, integration: str) -> tuple[int, int]:
        """``TIME`` of the Redis that holds the integration's keys (on a cluster, its primary: the clock its
        scripts stamp them with)."""
        if not self.cluster:
            return self.r.time()
        cluster = cast(Any, self.r)
        node = cluster.get_node_from_key(self.key(integration, "pending"))
        return cast(tuple[int, int], cluster.time(target_nodes=node))

    def node_of(self, integration: str) -> str | None:
        """On a cluster, ``host:port`` of the primary holding the integration's slot (its keys share one);
        None on a single Redis."""
        if not self.cluster:
            return None
        node = cast(Any, self.r).get_node_from_key(self.key(integration, "pending"))
        return f"{node.host}:{node.port}"

    # ----------------------------------------------------------------------------------------- ingest

    def known_emails(self, integration: str, user_ids: Sequence[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        values = cast(list[bytes | None], self.r.hmget(self.key(integration, "ids"), list(user_ids)))
        return _emails(user_ids, values)

    def seen_message_ids(self, integration: str, message_ids: Sequence[str], window_s: float) -> set[str]:
        """Read-only de-duplication check (for preview)."""
        if not message_ids or window_s <= 0:
            return set()
        now_s, _ = self.r.time()
        scores = self.r.zmscore(self.key(integration, "seen"), list(message_ids))
        floor = now_s * 1000 - window_s * 1000
        return {m for m, s in zip(message_ids, scores, strict=True) if s is not None and s > floor}

    def enqueue_call(
        self,
        integration: str,
        groups: Sequence[tuple[str, Sequence[bytes], str]],
        identities: Iterable[tuple[str, str]],
        dead: Sequence[tuple[str, bytes, str]],
        counters: dict[str, int],
        dedup_window_s: float,
        drops: Sequence[str] = (),
        progress: tuple[str, int] | None = None,
        identity_retention_s: float = 0,
        high_water: int = 0,
        hold: Hold | None = None,
        forgotten_gen: str = "0",
    ) -> Enqueue:
        """The enqueue, made and not yet sent (:meth:`run` or :meth:`run_async` sends it): queue each group
        ``(messageId, records, dead letter it replaces)`` unless its messageId was seen in the window (or the
        dead letter it replaces is gone: replayed already); store identities, mapping dead letters ``(id,
        entry, dead letter it replaces)`` and counters, remove ``drops``, and record ``progress`` ``(message
        id, chunks done)``, all in the same atomic step; with ``hold``, anonymous events are held and held
        ones released in that step too. ``forgotten_gen``: the generation of the suppression list the
        groups were filtered with (:class:`StaleForgotten` when it moved). Its answer
        (:meth:`enqueue_answer`): (records pushed, groups skipped: already replayed, or held events another
        enqueue released first, duplicate group indexes)."""
        args: list[Any] = [
            int(dedup_window_s * 1000),
            orjson.dumps([mid for mid, _, _ in groups]),
            orjson.dumps([len(records) for _, records, _ in groups]),
            b"\n".join(rec for _, records, _ in groups for rec in records),
            orjson.dumps([list(pair) for pair in identities]),
            orjson.dumps([[did, body.decode(), rep] for did, body, rep in dead]),
            orjson.dumps({k: v for k, v in counters.items() if v}),
            orjson.dumps([rep for _, _, rep in groups] if any(rep for _, _, rep in groups) else []),
            orjson.dumps(list(drops)),
            str(progress[1]) if progress else "",
            int(identity_retention_s * 1000),
            high_water,
            *(hold or Hold()).args(self.base(integration)),
        ]
        fixed = self._enqueue_keys.get(integration)
        if fixed is None:  # the same for every call: made once (a collector sends thousands a second)
            fixed = self._enqueue_keys[integration] = (
                self.keys(
                    integration, "pending", "arrivals", "flow", "seen", "ids", "dead", "dead:idx", "stats"
                ),
                self.keys(integration, "ids:seen", "dead:kinds", "anon:idx", "anon:count"),
                self.keys(integration, "forgotten:gen", "tokens:seen", "tokens:sent"),
            )
        keys = [
            *fixed[0],
            self.key(integration, f"ingest:{progress[0] if progress else ''}"),
            *fixed[1],
            self.key(integration, f"call:{os.urandom(8).hex()}"),
            *fixed[2],
        ]
        args.append(C.ENQUEUE_ANSWER_KEPT_MS)
        args.append(forgotten_gen)
        if not self.cluster:  # the script marks the integration ready: one command, not a pipeline of two
            keys.append(self.ready_key)
            args.append(integration)
        return Enqueue(integration, keys, args, high_water, hold)

    def enqueue_answer(self, call: Enqueue, result: Any) -> tuple[int, int, list[int]]:
        """What an enqueue's script answered comes to (see :meth:`enqueue_call`), or its exceptions."""
        integration, high_water, hold = call.integration, call.high_water, call.hold
        if int(result[0]) == -2:
            raise StaleForgotten(integration)
        if int(result[0]) < 0:
            raise QueueFull(
                f"integration {integration!r} has {high_water:,} or more records waiting (its high-water "
                "mark, max_pending): these events were not queued (any before them were); try again once "
                "delivery catches up"
            )
        if hold is not None:
            hold.full = int(result[2])
        return int(result[0]), int(result[1]), [int(x) for x in result[3:]]

    def held_events(self, integration: str, visitors: Sequence[str]) -> dict[str, list[bytes]]:
        """The events held for each visitor (its anonymousId's key), oldest first (read-only)."""
        if not visitors:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for visitor in visitors:
            pipe.lrange(self.key(integration, f"anon:{visitor}"), 0, C.MAX_HELD_PER_VISITOR - 1)
        return _held(visitors, pipe.execute())

    def chunks_done(self, integration: str, message_id: str) -> int:
        """How many chunks of an ingest message are queued already (0 for a message not seen)."""
        return int(cast(bytes | None, self.r.get(self.key(integration, f"ingest:{message_id}"))) or 0)

    def finish_message(self, integration: str, message_id: str) -> None:
        """An ingest message is done: keep its progress two hours more, past the broker's visibility timeout
        (a worker that died before acking it gets it back within that), then let it go."""
        self.r.expire(self.key(integration, f"ingest:{message_id}"), 2 * C.VISIBILITY_TIMEOUT_S)

    def keep_unqueued(
        self, integration: str, letters: Sequence[tuple[str, bytes]], progress: tuple[str, int]
    ) -> None:
        """Events that could not be queued become mapping dead letters, with the message's progress, in one
        MULTI (no script: a script may be what failed)."""
        now_ms = self._now_ms()  # Redis's clock, as the scripts stamp dead letters (replay's fence uses it)
        pipe = self.r.pipeline(transaction=True)
        for did, body in letters:
            pipe.hset(self.key(integration, "dead"), did, body)
            pipe.zadd(self.key(integration, "dead:idx"), {did: now_ms})
            kind = kind_of(body)
            if kind:
                pipe.hincrby(self.key(integration, "dead:kinds"), kind, 1)
        pipe.hincrby(self.key(integration, "stats"), "rejected_mapping", len(letters))
        pipe.set(self.key(integration, f"ingest:{progress[0]}"), progress[1], ex=86_400)
        pipe.execute()

    # --------------------------------------------------------------------------------------- batches

    def assemble(
        self, integration: str, batch_size: int, flush_s: float, max_batches: int = 20, cap: int = 0
    ) -> list[str]:
        """Cut up to ``max_batches`` batches, keeping at most ``cap`` open (0: no cap); returns their ids."""
        keys = self.keys(integration, "pending", "arrivals", "flow", "open", "auth", "stats", "import:open")
        args = [batch_size, int(flush_s * 1000), max_batches, self.base(integration), new_id(), cap]
        args.append(min(batch_size, C.MAX_TOKEN_BATCH))
        return [_s(b) for b in cast(list[bytes], self._run("assemble", keys, args))]

    def mark_unserved(self, integration: str) -> None:
        """An assembler found records queued for ``integration``, which its process does not serve."""
        self.r.hset(self.unserved_key, integration, self._now_ms())

    def unserved(self, within_s: float = C.UNSERVED_KEPT_S) -> dict[str, int]:
        """Integrations an assembler found unserved within the last ``within_s``: name -> ms last found."""
        floor = self._now_ms() - within_s * 1000
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.unserved_key))
        return {_s(k): int(v) for k, v in raw.items() if int(v) >= floor}

    def forget_unserved(self, within_s: float = C.UNSERVED_KEPT_S) -> None:
        """Drop what no assembler has found unserved within ``within_s`` (served again, or drained)."""
        fresh = self.unserved(within_s)
        stale = [_s(k) for k in cast(list[bytes], self.r.hkeys(self.unserved_key)) if _s(k) not in fresh]
        if stale:
            self.r.hdel(self.unserved_key, *stale)

    def queued_in_batches(self, integration: str) -> int:
        """Records in the integration's open and held batches (cut from pending, not yet delivered)."""
        bids = [
            *cast(list[bytes], self.r.zrange(self.key(integration, "open"), 0, -1)),
            *cast(list[bytes], self.r.zrange(self.key(integration, "held"), 0, -1)),
        ]
        if not bids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for bid in bids:
            pipe.hget(self.key(integration, f"meta:{_s(bid)}"), "size")
        return sum(int(size or 0) for size in pipe.execute())

    def ready_integrations(self) -> set[str]:
        return {_s(m) for m in cast(set[bytes], self.r.smembers(self.ready_key))}

    def mark_ready(self, integration: str) -> None:
        self.r.sadd(self.ready_key, integration)

    def unready_if_empty(self, integration: str) -> None:
        """Out of the ready set when nothing waits: no live record, no import reading or delivering."""
        if self._waiting(integration):
            return
        self.r.srem(self.ready_key, integration)
        if self._waiting(integration):  # raced with an ingest or an import: keep it ready
            self.r.sadd(self.ready_key, integration)

    def _waiting(self, integration: str) -> bool:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.key(integration, "pending"))
        pipe.zcard(self.key(integration, "imports"))
        return any(int(n) for n in pipe.execute())

    def lease(
        self, integration: str, bid: str, owner: str, lease_s: float, generation: int | None = None
    ) -> LeaseResult:
        """Lease the batch for a send message of dispatch ``generation`` (None: a message from before
        generations, taken as live)."""
        keys = self.keys(integration, "open", "held", "auth")
        args = [self.base(integration), bid, owner, int(lease_s * 1000), generation or 0]
        res = cast(list[Any], self._run("lease", keys, args))
        status = LeaseStatus(_s(res[0]))
        if status is LeaseStatus.EARLY:
            return LeaseResult(status, int(res[1]), due_ms=int(float(_s(res[2]))))
        if status is not LeaseStatus.OK:
            return LeaseResult(status, int(res[1]))
        now, created, attempts, failures, throttles, first_failure, first_throttle = (
            int(float(_s(x))) for x in res[1:]
        )
        history = BatchHistory(now, created, attempts, failures, throttles, first_failure, first_throttle)
        return LeaseResult(status, now, history)

    def unlease(self, integration: str, bid: str, owner: str, delay_s: float) -> int:
        """Give the batch back, due in ``delay_s``; returns its new dispatch generation (0: gone)."""
        args = [self.base(integration), bid, owner, int(delay_s * 1000)]
        return int(self._run("unlease", self.keys(integration, "open"), args))

    def batch_records(self, integration: str, bid: str) -> list[bytes]:
        raw = cast(bytes | None, self.r.get(self.key(integration, f"batch:{bid}")))
        return raw.split(b"\n") if raw else []

    def finish(
        self,
        integration: str,
        bid: str,
        owner: str,
        delivered: int,
        dead: Sequence[tuple[str, bytes]],
        counters: dict[str, int],
        authenticated: bool = False,
        debug: Debug = None,
    ) -> tuple[bool, list[tuple[str, int]]]:
        """Remove the batch; count delivered rows; dead-letter the rest. ``authenticated``: the answer proved
        the credentials (any 200), which releases held batches. Returns (applied, [(released bid,
        its generation)])."""
        keys = self.keys(
            integration, "open", "held", "auth", "dead", "dead:idx", "stats", "debug", "dead:kinds"
        )
        counts = orjson.dumps({k: v for k, v in counters.items() if v})
        args: list[Any] = [
            self.base(integration),
            bid,
            owner,
            delivered,
            int(authenticated),
            counts,
            *_debug(debug),
        ]
        for did, body in dead:
            args += [did, body]
        res = cast(list[Any], self._run("finish", keys, args))
        return bool(int(res[0])), _pairs(res[1:])

    def retry_later(
        self,
        integration: str,
        bid: str,
        owner: str,
        delay_s: float,
        kind: RetryKind,
        error: str,
        debug: Debug = None,
    ) -> int:
        """Count the attempt and make the batch due in ``delay_s``; returns its new dispatch generation
        (0: finished elsewhere)."""
        args = [
            self.base(integration),
            bid,
            owner,
            int(delay_s * 1000),
            RetryKind(kind).value,
            error,
            *_debug(debug),
        ]
        return int(self._run("retry", self.keys(integration, "open", "stats", "debug"), args))

    def split(self, integration: str, bid: str, owner: str, debug: Debug = None) -> list[str]:
        """Make two batches of the batch's two halves (generation 1 each); [] when it is gone."""
        args = [self.base(integration), bid, owner, *_debug(debug)]
        return [
            _s(x)
            for x in cast(
                list[bytes], self._run("split", self.keys(integration, "open", "stats", "debug"), args)
            )
        ]

    def hold(
        self, integration: str, bid: str, owner: str, reason: str, probe_s: float, debug: Debug = None
    ) -> bool:
        keys = self.keys(integration, "open", "held", "auth", "stats", "debug")
        return bool(
            self._run(
                "hold",
                keys,
                [self.base(integration), bid, owner, reason, int(probe_s * 1000), *_debug(debug)],
            )
        )

    def sweep(
        self,
        integration: str,
        grace_s: float,
        probe_s: float,
        dead_max_age_s: float = 0,
        dead_max_count: int = 0,
        hold_s: float = 0,
    ) -> SweepResult:
        keys = self.keys(
            integration, "open", "held", "auth", "pending", "stats", "dead", "dead:idx", "debug",
            "dead:kinds", "anon:idx", "anon:count",
        )  # fmt: skip
        args = [
            self.base(integration), int(grace_s * 1000), int(probe_s * 1000), int(dead_max_age_s * 1000),
            dead_max_count, int(hold_s * 1000),
        ]  # fmt: skip
        res = cast(list[Any], self._run("sweep", keys, args))
        probe = (_s(res[3]), int(res[4])) if _s(res[3]) else None
        return SweepResult(int(res[0]), int(res[1]), int(res[2]), probe, _pairs(res[5:]))

    def auth_state(self, integration: str) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.key(integration, "auth")))
        return {_s(k): _s(v) for k, v in raw.items()}

    # ----------------------------------------------------------------------------------- dead letters

    def dead_letter_ids(self, integration: str, offset: int = 0, limit: int = 100) -> list[str]:
        ids = self.r.zrange(self.key(integration, "dead:idx"), offset, offset + limit - 1)
        return [_s(x) for x in cast(list[bytes], ids)]

    def dead_letter_page(
        self, integration: str, after: tuple[str, str], low: int | str, high: int | str, limit: int
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` (id, ms) of dead letters stored between ``low`` and ``high`` (ms, or -inf/+inf),
        oldest first, after the cursor ``after`` = (ms, id) of the last one seen (``("-inf", "")`` first)."""
        res = cast(
            list[bytes],
            self._run("dead_page", [self.key(integration, "dead:idx")], [*after, low, high, limit]),
        )
        return [(_s(res[i]), _s(res[i + 1])) for i in range(0, len(res), 2)]

    def newest_dead_letter_ids(self, integration: str, limit: int) -> list[str]:
        ids = self.r.zrevrange(self.key(integration, "dead:idx"), 0, limit - 1)
        return [_s(x) for x in cast(list[bytes], ids)]

    def now_ms(self) -> int:
        """Redis's clock, epoch ms (the clock dead letters and due times are stamped with)."""
        return self._now_ms()

    def dead_letter_kinds(self, integration: str) -> dict[str, int]:
        """Dead letters kept, by kind; those stored before kinds were counted show as ``unknown``."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.key(integration, "dead:kinds"))
        pipe.hlen(self.key(integration, "dead"))
        raw, total = pipe.execute()
        kinds = {_s(k): int(v) for k, v in cast(dict[bytes, bytes], raw).items() if int(v) > 0}
        if total > sum(kinds.values()):
            kinds["unknown"] = total - sum(kinds.values())
        return dict(sorted(kinds.items()))

    def dead_letters(self, integration: str, ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        return cast(list[bytes | None], self.r.hmget(self.key(integration, "dead"), list(ids)))

    def debug_entries(self, integration: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The event debugger's entries, newest first."""
        raw = cast(list[bytes], self.r.lrange(self.key(integration, "debug"), 0, limit - 1))
        return [orjson.loads(x) for x in raw]

    def oldest_pending_age_s(self, integration: str) -> float | None:
        """How long the oldest record still waiting has waited (from the arrival marks); None: none waits."""
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.key(integration, "pending"))
        pipe.hget(self.key(integration, "flow"), "cut")
        pipe.lrange(self.key(integration, "arrivals"), 0, 200)
        pending, cut, marks = pipe.execute()
        now_s, now_us = self.time_of(integration)
        if not pending:
            return None
        cut_total = int(cut or 0)
        for mark in cast(list[bytes], marks):
            total, _, at = _s(mark).partition(":")
            if int(total) > cut_total:
                return max(0.0, round(float(now_s) + float(now_us) / 1e6 - int(at) / 1000, 3))
        return 0.0

    def dead_letter_count(self, integration: str) -> int:
        return int(self.r.hlen(self.key(integration, "dead")))

    def replay_records(
        self, integration: str, items: Sequence[tuple[str, bytes]], forgotten_gen: str = "0"
    ) -> list[str]:
        """Queue api dead letters' records again (each only while its dead letter is there), filtered with the
        suppression list of generation ``forgotten_gen`` (:class:`StaleForgotten` when it moved)."""
        names = ("dead", "dead:idx", "pending", "arrivals", "flow", "stats", "dead:kinds", "forgotten:gen")
        keys = self.keys(integration, *names)
        args: list[Any] = [forgotten_gen, *(x for pair in items for x in pair)]
        moved = cast(list[Any], self._then_ready("replay_records", keys, args, integration))
        if moved and isinstance(moved[0], int) and moved[0] == -2:
            raise StaleForgotten(integration)
        return [_s(x) for x in moved]

    def drop_dead_letters(
        self, integration: str, ids: Sequence[str], counter: str = "dead_letters_dropped"
    ) -> int:
        """Delete dead letters for good, counted under the stats field ``counter``."""
        if not ids:
            return 0
        keys = self.keys(integration, "dead", "dead:idx", "dead:kinds", "stats")
        return int(self._run("drop_dead", keys, [counter, *ids]))

    # ----------------------------------------------------------------------------------------- status

    def stats(self, integration: str) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.key(integration, "stats")))
        return {_s(k): int(v) for k, v in raw.items()}

    def count_fields_dropped(self, integration: str, by_key: dict[str, int]) -> None:
        """Profile values left out of queued records, in all and by key (``fields_dropped:<key>``)."""
        pipe = self.r.pipeline(transaction=False)
        for command in self._fields_dropped(integration, by_key):
            pipe.hincrby(*command)
        pipe.execute()

    def _fields_dropped(self, integration: str, by_key: dict[str, int]) -> list[tuple[str, str, int]]:
        stats = self.key(integration, "stats")
        return [(stats, "fields_dropped", sum(by_key.values()))] + [
            (stats, f"fields_dropped:{key}", n) for key, n in by_key.items()
        ]

    def incr(self, integration: str, field: str, n: int = 1) -> None:
        self.r.hincrby(self.key(integration, "stats"), field, n)

    def depth(self, integration: str) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.key(integration, "pending"))
        pipe.zcard(self.key(integration, "open"))
        pipe.zcard(self.key(integration, "held"))
        pipe.hlen(self.key(integration, "dead"))
        pending, open_, held, dead = pipe.execute()
        return {"pending": pending, "open_batches": open_, "held_batches": held, "dead_letters": dead}

    def open_batches(self, integration: str) -> list[str]:
        return [_s(b) for b in cast(list[bytes], self.r.zrange(self.key(integration, "open"), 0, -1))]

    def try_lock(self, name: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        ok = self.r.set(self.lock_key(name), token, nx=True, px=int(ttl_s * 1000))
        return token if ok else None

    def unlock(self, name: str, token: str) -> None:
        self._run("unlock", [self.lock_key(name)], [token])


def eviction_warning(url: str) -> str | None:
    """A warning when the Redis at ``url`` may evict keys (``maxmemory-policy`` other than noeviction), else
    None; None too when it cannot tell (CONFIG is disabled on some managed Redis, or Redis is not up yet)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        policy = _s(cast(dict[str, Any], client.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
    except redis.RedisError:
        return None
    finally:
        client.close()
    if policy and policy != "noeviction":
        return (
            f"Redis maxmemory-policy is {policy!r}: when Redis is full it evicts keys, and queued records, "
            "batches and dead letters vanish without a word. Set maxmemory-policy noeviction."
        )
    return None


def broker_is_a_cluster(url: str) -> bool:
    """Whether the Redis at ``url`` (Celery's broker) is a cluster node: kombu cannot use one (its keys
    would answer MOVED). False when it cannot tell (not up yet, or INFO refused)."""
    if not url.startswith(("redis://", "rediss://")):
        return False  # sentinel:// names a Sentinel-managed Redis; unix:// a local one
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except redis.RedisError:
        return False
    finally:
        client.close()


async def _evalsha(client: Any, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA on one of ``client``'s (``redis.asyncio``) pooled connections, packed by hiredis in one call:
    redis-py's ``execute_command`` (an encoding call per argument, its retry and observability wrappers)
    was about a tenth of the collector's CPU on one-event requests (bench-collect). A connection that fails
    or is cancelled mid-call is dropped (a reply may still be on its way). A call that failed on the
    connection (reset, timed out) is sent once more, the same bytes on a new connection, as redis-py's
    own retry would: it may have run, and the script's call id makes a second run answer what the first
    did, writing nothing."""
    pool = client.connection_pool
    packed = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
    for attempt in (1, 2):
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed)
            return await conn.read_response()
        except redis.exceptions.ResponseError:
            raise  # Redis answered (NOSCRIPT, a script's error): the connection is fine
        except (redis.ConnectionError, redis.TimeoutError):
            await conn.disconnect()
            if attempt == 2:
                raise
        except BaseException:
            await conn.disconnect()  # cancelled mid-call: an answer may still be on its way
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


def _emails(user_ids: Sequence[str], values: Sequence[bytes | None]) -> dict[str, str]:
    return {uid: v.decode() for uid, v in zip(user_ids, values, strict=True) if v is not None}


def _held(visitors: Sequence[str], got: Sequence[Any]) -> dict[str, list[bytes]]:
    return {v: list(cast(list[bytes], entries)) for v, entries in zip(visitors, got, strict=True) if entries}
