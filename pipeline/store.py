"""All Redis access: the key layout and every Lua script, in one place.

Key layout (``P`` is the key prefix, default ``ctp``; ``{I}`` the integration name as a Redis Cluster hash
tag, so every key of one integration lives in one slot and each script touches one slot only):

====================================  ======  ===============================================================
key                                   type    holds
====================================  ======  ===============================================================
``P:{I}:pending``                     list    queued records, pre-serialised CleverTap JSON, oldest first
``P:{I}:since``                       string  ms (Redis time) when the oldest waiting record arrived
``P:{I}:seen``                        zset    messageId -> ms first accepted (de-duplication window)
``P:{I}:ids``                         hash    userId -> email, remembered from identify calls
``P:{I}:batch:<bid>``                 string  the records of one assembled batch, in send order, joined by
                                              newlines
``P:{I}:meta:<bid>``                  hash    created, attempts, failures, throttles, first_failure,
                                              first_throttle, last_error
``P:{I}:open``                        zset    bid -> ms when the batch is next due to be sent
``P:{I}:held``                        zset    bid -> ms held, while the integration fails authentication
``P:{I}:lease:<bid>``                 string  the worker currently sending the batch (expires, PX)
``P:{I}:auth``                        hash    reason, since, next_probe, probe: present only while auth fails
``P:{I}:dead``                        hash    dead-letter id -> JSON entry (stage, code, error, record/event)
``P:{I}:dead:idx``                    zset    dead-letter id -> ms, for listing in order
``P:{I}:stats``                       hash    counters (accepted, delivered, retries_throttled, ...)
``P:{acct:<A>}:tokens``               zset    in-flight token id -> lease expiry ms, per CleverTap account
``P:{acct:<A>}:stats``                hash    ``peak``: the most tokens ever held at once
``P:{acct:<A>}:wake``                 list    one item per released token, for waiters blocked in BLPOP
``P:ready``                           set     integrations that may have records waiting
``P:assemble:lock``                   string  held by the one assembler run in progress (expires)
====================================  ======  ===============================================================

Records are orjson output, which never holds a raw newline (JSON escapes it inside strings), so a newline
is a safe separator: a batch is one string, read with one GET and turned into a request body with one
``replace``, instead of a thousand list elements parsed one by one on every send.

Every move of a record between pending, a batch, the dead letters and the delivered counter is one Lua
script, so a record is always in exactly one place. Times used for leases, due times and the
de-duplication window come from Redis ``TIME``: every host shares that one clock.
Batch keys (``batch:<bid>``, ``meta:<bid>``, ``lease:<bid>``) are named inside scripts; they carry the same
hash tag as the declared keys, so they live in the same slot.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

_NOW = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

# KEYS: pending, since, seen, ids, dead, dead_idx, stats
# ARGV: dedup_window_ms, messageIds (JSON array, '' = none), record counts (JSON array),
#       records (one blob, joined by newlines: serialised JSON never holds a raw newline),
#       identities (JSON [[userId, email], ...]), dead letters (JSON [[id, entry], ...]),
#       counters (JSON object), dead letters this replaces (JSON [id, ...]: a replayed mapping dead
#       letter leaves in the same step that queues its records)
# Passing a chunk as a handful of arguments instead of one per record keeps the client's packing cost
# flat. Returns {records_pushed, duplicate group indexes (0-based)...}
ENQUEUE = (
    _NOW
    + """
local window = tonumber(ARGV[1])
if window > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window) end
local mids, counts, blob = cjson.decode(ARGV[2]), cjson.decode(ARGV[3]), ARGV[4]
local pos, find, sub = 1, string.find, string.sub
local buf, pushed, accepted, dups = {}, 0, 0, {}
local function flush()
  if #buf > 0 then
    redis.call('RPUSH', KEYS[1], unpack(buf))
    pushed = pushed + #buf
    buf = {}
  end
end
for g = 1, #counts do
  local mid, n = mids[g], counts[g]
  local dup = false
  if window > 0 and mid ~= '' then
    if redis.call('ZSCORE', KEYS[3], mid) then dup = true else redis.call('ZADD', KEYS[3], now, mid) end
  end
  if dup then dups[#dups + 1] = g - 1 end
  if not dup then accepted = accepted + 1 end
  for _ = 1, n do
    local e = find(blob, '\\n', pos, true)
    if not dup then
      buf[#buf + 1] = sub(blob, pos, (e or 0) - 1)
      if #buf >= 1000 then flush() end
    end
    pos = (e or #blob) + 1
  end
end
flush()
if pushed > 0 then redis.call('SET', KEYS[2], now, 'NX') end
for _, pair in ipairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[4], pair[1], pair[2]) end
for _, pair in ipairs(cjson.decode(ARGV[6])) do
  redis.call('HSET', KEYS[5], pair[1], pair[2])
  redis.call('ZADD', KEYS[6], now, pair[1])
end
for field, n in pairs(cjson.decode(ARGV[7])) do redis.call('HINCRBY', KEYS[7], field, n) end
for _, old in ipairs(cjson.decode(ARGV[8])) do
  redis.call('HDEL', KEYS[5], old)
  redis.call('ZREM', KEYS[6], old)
end
redis.call('HINCRBY', KEYS[7], 'accepted', accepted)
redis.call('HINCRBY', KEYS[7], 'duplicate', #dups)
redis.call('HINCRBY', KEYS[7], 'records_queued', pushed)
local out = {pushed}
for _, d in ipairs(dups) do out[#out + 1] = d end
return out
"""
)

# KEYS: pending, since, open, auth, stats
# ARGV: batch_size, flush_ms, max_batches, key base ('P:{I}:'), batch id stem
# Moves up to max_batches batches of records pending -> batch:<bid> and registers each as open (due now).
# A partial batch goes only when the oldest waiting record has waited flush_ms. Nothing moves while
# the integration fails authentication. Returns the new batch ids.
ASSEMBLE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local size, flush_ms, maxb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base, stem = ARGV[4], ARGV[5]
local since = tonumber(redis.call('GET', KEYS[2]) or '-1')
local ids = {}
while #ids < maxb do
  local len = redis.call('LLEN', KEYS[1])
  if len == 0 then break end
  if len < size and (since < 0 or now - since < flush_ms) then break end
  local recs = redis.call('LRANGE', KEYS[1], 0, size - 1)
  redis.call('LTRIM', KEYS[1], #recs, -1)
  local bid = stem .. '-' .. (#ids + 1)
  redis.call('SET', base .. 'batch:' .. bid, table.concat(recs, '\\n'))
  redis.call('HSET', base .. 'meta:' .. bid, 'created', now, 'size', #recs, 'attempts', 0, 'failures', 0,
             'throttles', 0)
  redis.call('ZADD', KEYS[3], now, bid)
  ids[#ids + 1] = bid
end
if #ids > 0 then redis.call('HINCRBY', KEYS[5], 'batches_assembled', #ids) end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
elseif since < 0 then
  redis.call('SET', KEYS[2], now)
end
return ids
"""
)

# KEYS: open, held, auth, stats   ARGV: key base, bid, owner, lease_ms
# Returns {'ok', now, created, attempts, failures, throttles, first_failure} or {'gone'|'leased'|'held', now}
LEASE = (
    _NOW
    + """
local base, bid = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', KEYS[1], bid) then return {'gone', now} end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('HGET', KEYS[3], 'probe') ~= bid then
  redis.call('ZREM', KEYS[1], bid)
  redis.call('ZADD', KEYS[2], now, bid)
  return {'held', now}
end
if not redis.call('SET', base .. 'lease:' .. bid, ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {'leased', now}
end
local m = redis.call('HMGET', base .. 'meta:' .. bid, 'created', 'attempts', 'failures', 'throttles',
                     'first_failure', 'first_throttle')
return {'ok', now, m[1] or now, m[2] or 0, m[3] or 0, m[4] or 0, m[5] or 0, m[6] or 0}
"""
)

# KEYS: open   ARGV: key base, bid, owner, delay_ms
# Gives the batch back without having sent it (no token free): due again after delay_ms.
UNLEASE = (
    _NOW
    + """
local lease = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('GET', lease) == ARGV[3] then redis.call('DEL', lease) end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[4]), ARGV[2])
return now
"""
)

# KEYS: open, held, auth, dead, dead_idx, stats   ARGV: key base, bid, owner, mode, ...
#  mode 'done'  : delivered, n_dead, (id, json)*, n_counters, (field, incr)*  -> batch removed
#                 a clean send while auth was failing ends the failure and releases every held batch
#  mode 'retry' : delay_ms, kind ('failures'|'throttles'), last_error
#  mode 'hold'  : reason, probe_ms
# Returns {applied (1/0), released held bid*}. 0 when the batch was already finished elsewhere.
APPLY = (
    _NOW
    + """
local base, bid, owner, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local meta, lease = base .. 'meta:' .. bid, base .. 'lease:' .. bid
if redis.call('EXISTS', meta) == 0 then
  if redis.call('GET', lease) == owner then redis.call('DEL', lease) end
  return {0}
end
if redis.call('GET', lease) == owner then redis.call('DEL', lease) end
local out = {1}
if mode == 'done' then
  redis.call('HINCRBY', KEYS[6], 'delivered', ARGV[5])
  local i = 6
  local ndead = tonumber(ARGV[i]); i = i + 1
  for _ = 1, ndead do
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[5], now, ARGV[i])
    i = i + 2
  end
  local nctr = tonumber(ARGV[i]); i = i + 1
  for _ = 1, nctr do redis.call('HINCRBY', KEYS[6], ARGV[i], ARGV[i + 1]); i = i + 2 end
  redis.call('DEL', base .. 'batch:' .. bid, meta)
  redis.call('ZREM', KEYS[1], bid)
  redis.call('ZREM', KEYS[2], bid)
  if redis.call('EXISTS', KEYS[3]) == 1 and tonumber(ARGV[5]) > 0 then
    redis.call('DEL', KEYS[3])
    local held = redis.call('ZRANGE', KEYS[2], 0, -1)
    for _, h in ipairs(held) do
      redis.call('ZADD', KEYS[1], now, h)
      out[#out + 1] = h
    end
    redis.call('DEL', KEYS[2])
  end
elseif mode == 'retry' then
  local kind = ARGV[6]
  redis.call('HINCRBY', meta, 'attempts', 1)
  redis.call('HINCRBY', meta, kind, 1)
  redis.call('HSET', meta, 'last_error', ARGV[7])
  redis.call('HSETNX', meta, kind == 'failures' and 'first_failure' or 'first_throttle', now)
  redis.call('HINCRBY', KEYS[6], 'retries_' .. kind, 1)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), bid)
elseif mode == 'hold' then
  redis.call('ZREM', KEYS[1], bid)
  redis.call('ZADD', KEYS[2], now, bid)
  redis.call('HINCRBY', meta, 'attempts', 1)
  redis.call('HSET', meta, 'last_error', ARGV[5])
  if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('HSET', KEYS[3], 'since', now) end
  redis.call('HSET', KEYS[3], 'reason', ARGV[5], 'next_probe', now + tonumber(ARGV[6]), 'probe', '')
  redis.call('HINCRBY', KEYS[6], 'auth_failures', 1)
end
return out
"""
)

# KEYS: open, held, auth, pending, stats   ARGV: key base, grace_ms, probe_ms
# Re-publishes open batches overdue by grace_ms that nobody holds a lease on; starts an auth probe when
# one is due. Returns {n_open, n_held, n_pending, probe bid or '', redispatched bid*}.
SWEEP = (
    _NOW
    + """
local base, grace, probe_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local overdue = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - grace, 'LIMIT', 0, 1000)
local again = {}
for _, bid in ipairs(overdue) do
  if redis.call('EXISTS', base .. 'lease:' .. bid) == 0 then
    redis.call('ZADD', KEYS[1], now, bid)
    again[#again + 1] = bid
  end
end
local probe = ''
if redis.call('EXISTS', KEYS[3]) == 1 and tonumber(redis.call('HGET', KEYS[3], 'next_probe') or 0) <= now then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #first == 0 then
    redis.call('DEL', KEYS[3])  -- nothing held: let the assembler's next batch be the probe
  else
    probe = first[1]
    redis.call('ZREM', KEYS[2], probe)
    redis.call('ZADD', KEYS[1], now, probe)
    redis.call('HSET', KEYS[3], 'probe', probe, 'next_probe', now + probe_ms)
  end
end
if #again > 0 then redis.call('HINCRBY', KEYS[5], 'swept', #again) end
local out = {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('LLEN', KEYS[4]), probe}
for _, bid in ipairs(again) do out[#out + 1] = bid end
return out
"""
)

# KEYS: tokens, account stats   ARGV: limit, lease_ms, token id
# Returns {1, in_flight} when taken, {0, ms until the earliest lease ends} when the account is full.
ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
if n + 1 > tonumber(redis.call('HGET', KEYS[2], 'peak') or '0') then
  redis.call('HSET', KEYS[2], 'peak', n + 1)
end
return {1, n + 1}
"""
)

# KEYS: tokens, wake   ARGV: token id, limit
# Frees a token and wakes one waiter (the list is trimmed to the limit: wake-ups nobody takes are few).
RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
end
return removed
"""

# KEYS: dead, dead_idx, pending, since, stats   ARGV: n, (id)*
# Moves api-stage dead letters' records back to the pending queue. Returns the ids moved.
REPLAY_RECORDS = (
    _NOW
    + """
local moved = {}
for i = 2, tonumber(ARGV[1]) * 2, 2 do
  local id, rec = ARGV[i], ARGV[i + 1]
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    redis.call('RPUSH', KEYS[3], rec)
    moved[#moved + 1] = id
  end
end
if #moved > 0 then
  redis.call('SET', KEYS[4], now, 'NX')
  redis.call('HINCRBY', KEYS[5], 'replayed', #moved)
end
return moved
"""
)


_seq = itertools.count()


def new_id() -> str:
    """Unique across hosts (pid and random parts) and, within a process, sorted in the order made."""
    seq = next(_seq) % 1_000_000
    return f"{int(time.time() * 1000):013d}-{seq:06d}-{os.getpid() % 100000:05d}{secrets.token_hex(3)}"


def dead_letter(integ: str, stage: str, **fields: Any) -> tuple[str, bytes]:
    """A dead-letter entry (``stage`` mapping or api) and its id, ready for the scripts that store it."""
    did = new_id()
    entry = {"id": did, "integration": integ, "stage": stage, "time": round(time.time(), 3), **fields}
    return did, orjson.dumps(entry, default=str)


@dataclass(frozen=True)
class LeaseResult:
    status: str  # ok | gone | leased | held
    now_ms: int
    created_ms: int = 0
    attempts: int = 0
    failures: int = 0
    throttles: int = 0
    first_failure_ms: int = 0
    first_throttle_ms: int = 0


@dataclass(frozen=True)
class SweepResult:
    open: int
    held: int
    pending: int
    probe: str | None
    redispatch: list[str]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """Redis operations of the pipeline. One instance per process; it holds a connection pool."""

    def __init__(self, client: redis.Redis, prefix: str = "ctp") -> None:
        self.r = client
        self.prefix = prefix
        self._enqueue = client.register_script(ENQUEUE)
        self._assemble = client.register_script(ASSEMBLE)
        self._lease = client.register_script(LEASE)
        self._unlease = client.register_script(UNLEASE)
        self._apply = client.register_script(APPLY)
        self._sweep = client.register_script(SWEEP)
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._replay = client.register_script(REPLAY_RECORDS)

    @classmethod
    def from_url(cls, url: str, prefix: str = "ctp") -> Store:
        return cls(redis.Redis.from_url(url, health_check_interval=30), prefix)

    # ------------------------------------------------------------------------------------------ keys

    def base(self, integ: str) -> str:
        return f"{self.prefix}:{{{integ}}}:"

    def key(self, integ: str, name: str) -> str:
        return f"{self.prefix}:{{{integ}}}:{name}"

    def account_key(self, account: str, name: str) -> str:
        return f"{self.prefix}:{{acct:{account}}}:{name}"

    @property
    def ready_key(self) -> str:
        return f"{self.prefix}:ready"

    # ----------------------------------------------------------------------------------------- ingest

    def known_emails(self, integ: str, user_ids: Sequence[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        values = cast(list[bytes | None], self.r.hmget(self.key(integ, "ids"), list(user_ids)))
        return {uid: v.decode() for uid, v in zip(user_ids, values, strict=True) if v is not None}

    def seen_message_ids(self, integ: str, message_ids: Sequence[str], window_s: float) -> set[str]:
        """Read-only de-duplication check (for preview)."""
        if not message_ids or window_s <= 0:
            return set()
        now_s, _ = self.r.time()
        scores = self.r.zmscore(self.key(integ, "seen"), list(message_ids))
        floor = now_s * 1000 - window_s * 1000
        return {m for m, s in zip(message_ids, scores, strict=True) if s is not None and s > floor}

    def enqueue(
        self,
        integ: str,
        groups: Sequence[tuple[str, Sequence[bytes]]],
        identities: Iterable[tuple[str, str]],
        dead: Sequence[tuple[str, bytes]],
        counters: dict[str, int],
        dedup_window_s: float,
        replaces: Sequence[str] = (),
    ) -> tuple[int, list[int]]:
        """Queue each group's records unless its messageId was seen in the window; store identities,
        mapping dead letters and counters in the same atomic step. Returns (records pushed, duplicate
        group indexes)."""
        counts = [len(records) for _, records in groups]
        blob = b"\n".join(rec for _, records in groups for rec in records)
        args: list[Any] = [
            int(dedup_window_s * 1000),
            orjson.dumps([mid for mid, _ in groups]),
            orjson.dumps(counts),
            blob,
            orjson.dumps([list(pair) for pair in identities]),
            orjson.dumps([[did, body.decode()] for did, body in dead]),
            orjson.dumps({k: v for k, v in counters.items() if v}),
            orjson.dumps(list(replaces)),
        ]
        keys = [self.key(integ, k) for k in ("pending", "since", "seen", "ids", "dead", "dead:idx", "stats")]
        pipe = self.r.pipeline(transaction=False)
        self._enqueue(keys=keys, args=args, client=pipe)
        pipe.sadd(self.ready_key, integ)
        result = cast(list[int], pipe.execute()[0])
        return int(result[0]), [int(x) for x in result[1:]]

    # --------------------------------------------------------------------------------------- batches

    def assemble(self, integ: str, batch_size: int, flush_s: float, max_batches: int = 20) -> list[str]:
        keys = [self.key(integ, k) for k in ("pending", "since", "open", "auth", "stats")]
        stem = new_id()
        ids = self._assemble(
            keys=keys, args=[batch_size, int(flush_s * 1000), max_batches, self.base(integ), stem]
        )
        return [_s(b) for b in cast(list[bytes], ids)]

    def ready_integrations(self) -> set[str]:
        return {_s(m) for m in cast(set[bytes], self.r.smembers(self.ready_key))}

    def mark_ready(self, integ: str) -> None:
        self.r.sadd(self.ready_key, integ)

    def unready_if_empty(self, integ: str) -> None:
        if self.r.llen(self.key(integ, "pending")) == 0:
            self.r.srem(self.ready_key, integ)
            if self.r.llen(self.key(integ, "pending")):  # raced with an ingest: keep it ready
                self.r.sadd(self.ready_key, integ)

    def lease(self, integ: str, bid: str, owner: str, lease_s: float) -> LeaseResult:
        keys = [self.key(integ, k) for k in ("open", "held", "auth", "stats")]
        res = cast(
            list[Any], self._lease(keys=keys, args=[self.base(integ), bid, owner, int(lease_s * 1000)])
        )
        status = _s(res[0])
        if status != "ok":
            return LeaseResult(status, int(res[1]))
        return LeaseResult(status, *(int(float(_s(x))) for x in res[1:]))

    def unlease(self, integ: str, bid: str, owner: str, delay_s: float) -> None:
        self._unlease(
            keys=[self.key(integ, "open")], args=[self.base(integ), bid, owner, int(delay_s * 1000)]
        )

    def batch_records(self, integ: str, bid: str) -> list[bytes]:
        raw = cast(bytes | None, self.r.get(self.key(integ, f"batch:{bid}")))
        return raw.split(b"\n") if raw else []

    def _apply_keys(self, integ: str) -> list[str]:
        return [self.key(integ, k) for k in ("open", "held", "auth", "dead", "dead:idx", "stats")]

    def finish(
        self,
        integ: str,
        bid: str,
        owner: str,
        delivered: int,
        dead: Sequence[tuple[str, bytes]],
        counters: dict[str, int],
    ) -> tuple[bool, list[str]]:
        """Remove the batch; count delivered rows; dead-letter the rest. Returns (applied, released held)."""
        args: list[Any] = [self.base(integ), bid, owner, "done", delivered, len(dead)]
        for did, body in dead:
            args += [did, body]
        ctr = [(k, v) for k, v in counters.items() if v]
        args.append(len(ctr))
        for name, n in ctr:
            args += [name, n]
        res = cast(list[Any], self._apply(keys=self._apply_keys(integ), args=args))
        return bool(int(res[0])), [_s(x) for x in res[1:]]

    def retry_later(self, integ: str, bid: str, owner: str, delay_s: float, kind: str, error: str) -> bool:
        args: list[Any] = [self.base(integ), bid, owner, "retry", int(delay_s * 1000), kind, error]
        res = cast(list[Any], self._apply(keys=self._apply_keys(integ), args=args))
        return bool(int(res[0]))

    def hold(self, integ: str, bid: str, owner: str, reason: str, probe_s: float) -> bool:
        args: list[Any] = [self.base(integ), bid, owner, "hold", reason, int(probe_s * 1000)]
        res = cast(list[Any], self._apply(keys=self._apply_keys(integ), args=args))
        return bool(int(res[0]))

    def sweep(self, integ: str, grace_s: float, probe_s: float) -> SweepResult:
        keys = [self.key(integ, k) for k in ("open", "held", "auth", "pending", "stats")]
        res = cast(
            list[Any],
            self._sweep(keys=keys, args=[self.base(integ), int(grace_s * 1000), int(probe_s * 1000)]),
        )
        probe = _s(res[3])
        return SweepResult(int(res[0]), int(res[1]), int(res[2]), probe or None, [_s(x) for x in res[4:]])

    def auth_state(self, integ: str) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.key(integ, "auth")))
        return {_s(k): _s(v) for k, v in raw.items()}

    # ---------------------------------------------------------------------------------------- tokens

    def acquire_token(self, account: str, limit: int, lease_s: float, token: str) -> tuple[bool, int]:
        keys = [self.account_key(account, "tokens"), self.account_key(account, "stats")]
        res = cast(list[int], self._acquire(keys=keys, args=[limit, int(lease_s * 1000), token]))
        return bool(res[0]), int(res[1])

    def release_token(self, account: str, token: str, limit: int = 15) -> bool:
        keys = [self.account_key(account, "tokens"), self.account_key(account, "wake")]
        return bool(self._release(keys=keys, args=[token, limit]))

    def wait_for_token(self, account: str, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for a release; True when woken (a token may be free: try again)."""
        return self.r.blpop([self.account_key(account, "wake")], timeout=max(0.01, timeout_s)) is not None

    def tokens_in_flight(self, account: str) -> int:
        now_s, now_us = self.r.time()
        now_ms = now_s * 1000 + now_us // 1000
        return int(self.r.zcount(self.account_key(account, "tokens"), f"({now_ms}", "+inf"))

    def expire_tokens(self, account: str) -> int:
        now_s, now_us = self.r.time()
        return int(
            self.r.zremrangebyscore(
                self.account_key(account, "tokens"), "-inf", now_s * 1000 + now_us // 1000
            )
        )

    def peak_in_flight(self, account: str) -> int:
        value = self.r.hget(self.account_key(account, "stats"), "peak")
        return int(cast(bytes, value)) if value else 0

    # ----------------------------------------------------------------------------------- dead letters

    def dead_letter_ids(self, integ: str, offset: int = 0, limit: int = 100) -> list[str]:
        ids = self.r.zrange(self.key(integ, "dead:idx"), offset, offset + limit - 1)
        return [_s(x) for x in cast(list[bytes], ids)]

    def dead_letters(self, integ: str, ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        return cast(list[bytes | None], self.r.hmget(self.key(integ, "dead"), list(ids)))

    def dead_letter_count(self, integ: str) -> int:
        return int(self.r.hlen(self.key(integ, "dead")))

    def replay_records(self, integ: str, items: Sequence[tuple[str, bytes]]) -> list[str]:
        keys = [self.key(integ, k) for k in ("dead", "dead:idx", "pending", "since", "stats")]
        args: list[Any] = [len(items)]
        for did, rec in items:
            args += [did, rec]
        pipe = self.r.pipeline(transaction=False)
        self._replay(keys=keys, args=args, client=pipe)
        pipe.sadd(self.ready_key, integ)
        return [_s(x) for x in cast(list[bytes], pipe.execute()[0])]

    def drop_dead_letters(self, integ: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self.key(integ, "dead"), *ids)
        pipe.zrem(self.key(integ, "dead:idx"), *ids)
        return int(pipe.execute()[0])

    # ----------------------------------------------------------------------------------------- status

    def stats(self, integ: str) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.key(integ, "stats")))
        return {_s(k): int(v) for k, v in raw.items()}

    def incr(self, integ: str, field: str, n: int = 1) -> None:
        self.r.hincrby(self.key(integ, "stats"), field, n)

    def depth(self, integ: str) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.key(integ, "pending"))
        pipe.zcard(self.key(integ, "open"))
        pipe.zcard(self.key(integ, "held"))
        pipe.hlen(self.key(integ, "dead"))
        pending, open_, held, dead = pipe.execute()
        return {"pending": pending, "open_batches": open_, "held_batches": held, "dead_letters": dead}

    def open_batches(self, integ: str) -> list[str]:
        return [_s(b) for b in cast(list[bytes], self.r.zrange(self.key(integ, "open"), 0, -1))]

    def try_lock(self, name: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        ok = self.r.set(f"{self.prefix}:{name}:lock", token, nx=True, px=int(ttl_s * 1000))
        return token if ok else None

    def unlock(self, name: str, token: str) -> None:
        key = f"{self.prefix}:{name}:lock"
        # Compare-and-delete, so a run that overran its TTL never frees the next run's lock.
        self.r.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            key,
            token,
        )
