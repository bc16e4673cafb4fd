"""Forgetting a user (GDPR, CCPA): no copy left in the pipeline, then CleverTap's Delete User Profile API.

A request names the user (emails or CleverTap identities, userIds, objectIds, anonymousIds) and runs in
three steps, each safe to run again after a crash (a request is leased to one process at a time, and the
beat's sweep hands an unfinished one to a worker):

1. **Asked.** The request is written to Redis (``P:{forget}:req:<id>``: the one place the identities stay
   in clear, until CleverTap confirms) and each integration's suppression list gets their SHA-256 digests:
   from then on every enqueue and replay filters events that name them (counted as ``forgotten``), for
   ``forget_suppress_days``.
2. **Purged.** Every copy is removed, in bounded steps (no Redis call long enough to hold others up): the
   identity map's entries, the anonymous hold of their visitors, pending records (overwritten in place by a
   tombstone that assemble drops), open and held batches (rewritten without them), dead letters, the
   event debugger's entries and the de-duplication window's messageIds that hold one of their values.
   Values found beside theirs (a userId next to their email in the identity map, an anonymousId in their
   dead-lettered event) are forgotten too, in another pass. A batch that was being
   sent as it was rewritten is waited for (its lease), then the dead letters and debugger are looked at
   again: its answer may have written either.
3. **Deleted at CleverTap.** ``POST /1/delete/profiles.json`` per account, identities and guids (objectIds)
   in separate requests of at most 100, one at a time per account (``delete_concurrency``) and under the
   account's in-flight tokens with the uploads. 429, 5xx and network failures are retried with backoff
   until the integration's give_up_age; 401/403 hold the request until an auth probe interval later; any
   other answer fails it. Once every account confirmed, the identities are removed from the request: only
   the digests remain.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import logging
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from pipeline import constants as C
from pipeline.client import UploadClient
from pipeline.config import IntegrationConfig, Settings
from pipeline.errors import InputError, where
from pipeline.forgotten import broker_messages
from pipeline.limiter import Limiter, RedisTokens
from pipeline.policy import Attempt, full_jitter
from pipeline.store import OUTAGE_ERRORS, Store, new_id

log = logging.getLogger("pipeline.forget")

#: Pending records looked at per script call: a few ms of Redis time, whatever the number of values
#: (lib/names.lua reads each record's identifying fields once; docs/performance.md).
PENDING_STEP = 2000
#: Dead letters and identity-map entries read per HSCAN, debugger entries per LRANGE.
SCAN_COUNT = 500
DEBUG_PAGE = 100
#: Rounds that follow the identity map's links (their email to a userId, that userId to another email...).
MAX_PASSES = 8
#: The longest value a request takes (an identity, an id), and how many values in all.
MAX_VALUE_CHARS = 1024
MAX_VALUES = 10_000
#: Backoff of a retried delete request.
DELETE_BACKOFF_BASE_S = 1.0
DELETE_BACKOFF_CAP_S = 300.0
#: How long a request waits for the account's tokens in-process before it tries again shortly.
TOKEN_WAIT_S = 2.0

KINDS = ("identities", "user_ids", "object_ids", "anonymous_ids")
_SINGULAR = {"identities": "identity", "user_ids": "user id", "object_ids": "object id",
             "anonymous_ids": "anonymous id"}  # fmt: skip


class State(enum.StrEnum):
    PURGING = "purging"  # asked: the pipeline's copies are being removed
    DELETING = "deleting"  # no copy left here; CleverTap's delete not yet confirmed
    HELD = "held"  # CleverTap refused the credentials (401/403): tried again after auth_probe_interval
    DONE = "done"  # CleverTap confirmed: the identities are gone from the request too
    FAILED = "failed"  # CleverTap refused the delete, or it kept failing past give_up_age


#: States with work left (in ``P:{forget}:open``, due at a time).
UNFINISHED = (State.PURGING, State.DELETING, State.HELD)


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Who:
    """The values that name one user (or several, forgotten together)."""

    identities: tuple[str, ...] = ()  # emails, or CleverTap identities
    user_ids: tuple[str, ...] = ()
    object_ids: tuple[str, ...] = ()  # CleverTap IDs (guid)
    anonymous_ids: tuple[str, ...] = ()

    def values(self) -> set[str]:
        return {v for kind in KINDS for v in getattr(self, kind)}

    def normals(self) -> set[str]:
        return {normal(v) for v in self.values()}

    def __or__(self, other: Who) -> Who:
        return Who(*(tuple(dict.fromkeys((*getattr(self, kind), *getattr(other, kind)))) for kind in KINDS))

    def minus(self, known: Who) -> Who:
        """What this names that ``known`` does not."""
        seen = known.normals()
        return Who(*(tuple(v for v in getattr(self, kind) if normal(v) not in seen) for kind in KINDS))

    def __bool__(self) -> bool:
        return any(getattr(self, kind) for kind in KINDS)

    def as_dict(self) -> dict[str, list[str]]:
        return {kind: list(getattr(self, kind)) for kind in KINDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Who:
        return cls(*(tuple(str(v) for v in data.get(kind) or ()) for kind in KINDS))

    def counts(self) -> dict[str, int]:
        return {kind: len(getattr(self, kind)) for kind in KINDS}


def checked(who: Who) -> Who:
    """``who`` with each value stripped; InputError naming the first bad value (empty, too long, too many)."""
    out: dict[str, list[str]] = {}
    total = 0
    for kind in KINDS:
        values = []
        for n, raw in enumerate(getattr(who, kind), start=1):
            value = str(raw).strip()
            label = f"{_SINGULAR[kind]} {n}"
            if not value:
                raise InputError(f"{label} is empty")
            if len(value) > MAX_VALUE_CHARS:
                raise InputError(f"{label} is longer than {MAX_VALUE_CHARS} characters")
            if any(ord(c) < 32 for c in value):
                raise InputError(f"{label} holds a control character")
            values.append(value)
        out[kind] = list(dict.fromkeys(values))
        total += len(out[kind])
    if total == 0:
        raise InputError("name at least one user: --identity, --user-id, --object-id or --anonymous-id")
    if total > MAX_VALUES:
        raise InputError(f"{total:,} values in one request: at most {MAX_VALUES:,}")
    return Who.from_dict(out)


_NAMES = {"identity": "identities", "user_id": "user_ids", "object_id": "object_ids",
          "anonymous_id": "anonymous_ids"}  # fmt: skip


def values_from_lines(lines: Sequence[str], source: str) -> Who:
    """Values one per line: ``KIND:VALUE`` (identity, user_id, object_id, anonymous_id) or a bare email or
    identity; blank lines and ``#`` comments are skipped. An unknown kind or an empty value is an
    InputError naming ``source`` and the line."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for n, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        kind, sep, value = text.partition(":")
        if sep and kind.strip() in _NAMES:
            target, value = _NAMES[kind.strip()], value.strip()
        elif sep and "@" not in kind and kind.strip().replace("_", "").isalpha():
            # the kind is not echoed: it may be part of a value (the console puts this in its redirect)
            raise InputError(f"{source}, line {n}: unknown kind before ':' (one of {', '.join(_NAMES)})")
        else:
            target, value = "identities", text
        if not value:
            raise InputError(f"{source}, line {n}: no value after {kind.strip()}:")
        found[target].append(value)
    return Who.from_dict(found)


def normal(value: str) -> str:
    """How a value is compared: stripped, and an email (anything with an @) in lower case."""
    value = value.strip()
    return value.lower() if "@" in value else value


def digest(value: str) -> str:
    """What the suppression list and the audit trail keep of a value: SHA-256 of its normal form."""
    return hashlib.sha256(normal(value).encode("utf-8", "replace")).hexdigest()


def digests_of(who: Who) -> list[str]:
    return sorted({digest(v) for v in who.values()})


def wanted_of(values: Iterable[str]) -> list[str]:
    """What the scripts look for in a record's identifying fields (lib/names.lua): each value as orjson
    writes a JSON string, as given and in its normal form (the scripts lower-case an email they meet before
    they look), and a number as a bare number."""
    out: set[str] = set()
    for value in values:
        # the scripts lower-case ASCII only: an email with other capitals is looked for as given too
        forms = {value.strip(), normal(value)}
        if "@" in value:  # only an email matches in any case: ids keep theirs (Bob123 is not bob123)
            forms.add("".join(c.lower() if c.isascii() else c for c in value.strip()))
        for form in forms:
            if form:
                out.add(orjson.dumps(form).decode())
                if form.isdigit():
                    out.add(form)
    return sorted(out)


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def event_values(event: Any) -> list[str]:
    """The values of an event that say who it is about: userId, anonymousId, emails (traits,
    context.traits, properties)."""
    ev = _dict(event)
    return [
        v
        for v in (
            _text(ev.get("userId")),
            _text(ev.get("anonymousId")),
            _text(_dict(ev.get("traits")).get("email")),
            _text(_dict(_dict(ev.get("context")).get("traits")).get("email")),
            _text(_dict(ev.get("properties")).get("email")),
        )
        if v
    ]


def record_values(record: Any) -> list[str]:
    """The values of a CleverTap record that say who it is about (the fields lib/names.lua reads)."""
    rec = _dict(record)
    profile = _dict(rec.get("profileData"))
    fields = (rec.get("identity"), rec.get("objectId"), profile.get("Email"), profile.get("Identity"))
    return [v for v in map(_text, fields) if v]


def any_of(values: Iterable[str], norms: set[str]) -> bool:
    """Whether any of ``values`` is one of ``norms`` (normal forms)."""
    return any(normal(v) in norms for v in values)


def entry_names(entry: Any, norms: set[str]) -> bool:
    """Whether a dead letter is about one of them: its record's identifying fields (stage api) or its
    event's (stage mapping)."""
    e = _dict(entry)
    return (
        any_of(record_values(e.get("record")), norms)
        or any_of(event_values(e.get("event")), norms)
        or any_of(row_values(e.get("row")), norms)
    )


def row_values(row: Any) -> list[str]:
    """The values of a row an import refused (a CSV row by header, or a ready record) that say who it is
    about: its identity, email and objectId, as a record's."""
    r = _dict(row)
    return [*record_values(r), *(v for k in ("identity", "email", "objectId") if (v := _text(r.get(k))))]


def anonymous_ids_beside(event: Any, norms: set[str]) -> list[str]:
    """An event's anonymousId when the event is theirs by its userId or email: their anonymous hold goes
    (the hold would release those events under them). An anonymousId is a device's, not a person's: it
    is never followed to other values (a shared computer would lead to someone else)."""
    ev = _dict(event)
    anonymous = _text(ev.get("anonymousId"))
    if not anonymous or normal(anonymous) in norms:
        return []
    others = [v for v in event_values(ev) if v != anonymous]
    return [anonymous] if any_of(others, norms) else []


def debugger_names(entry: bytes, norms: set[str], emails: Sequence[str]) -> bool:
    """Whether an event debugger entry names them: a record CleverTap's answer echoes (``unprocessed``) by its
    identifying fields, or one of their emails as a JSON string anywhere in the answer."""
    e = _dict(_loads(entry))
    body = str(e.get("body") or "")
    answer = _dict(_loads(body.encode())) if body.startswith("{") else {}
    rows = answer.get("unprocessed")
    for row in rows if isinstance(rows, list) else []:
        if any_of(record_values(_dict(row).get("record")), norms):
            return True
    lowered = body.lower()
    return any(f'"{email}"' in lowered for email in emails)


def suppressed(values: Iterable[str], digests: dict[str, int], now_ms: int) -> bool:
    """Whether any value is on a suppression list (digest -> ms it is suppressed until)."""
    return any(digests.get(digest(v), 0) > now_ms for v in values)


# ----------------------------------------------------------------------------------- CleverTap's side


def delete_bodies(who: Who) -> list[tuple[str, list[str]]]:
    """The delete requests for ``who``: identities (emails and identities; userIds too, which an integration
    sends as the identity when it knows no email) and guids (objectIds; userIds and anonymousIds too, which
    mapping sends as the objectId when it has nothing else), never both in one body (CleverTap answers 400),
    each of at most MAX_DELETE_VALUES. A value CleverTap does not know deletes nothing."""
    identities = list(dict.fromkeys((*who.identities, *who.user_ids)))
    guids = list(dict.fromkeys((*who.object_ids, *who.user_ids, *who.anonymous_ids)))
    step = C.MAX_DELETE_VALUES
    return [
        *(("identity", identities[i : i + step]) for i in range(0, len(identities), step)),
        *(("guid", guids[i : i + step]) for i in range(0, len(guids), step)),
    ]


def delete_body(kind: str, values: Sequence[str]) -> bytes:
    return orjson.dumps({kind: list(values)})


class Verdict(enum.StrEnum):
    DONE = "done"
    RETRY = "retry"
    HOLD = "hold"
    FAILED = "failed"


def judge_delete(attempt: Attempt, values: Iterable[str] = ()) -> tuple[Verdict, str]:
    """What one delete request's answer comes to. The body of a success is not documented (RudderStack
    reads the status only): a 2xx is done unless its body says ``"status": "fail"``."""
    status = attempt.status
    if status is None:
        return Verdict.RETRY, f"no answer: {attempt.error or 'network error'}"
    detail = _error_text(attempt.body, values)
    if 200 <= status < 300:
        body = _loads(attempt.body) if attempt.body else None
        if isinstance(body, dict) and body.get("status") == "fail":  # a 200 that says it did not
            return Verdict.FAILED, f"HTTP {status}, status fail{detail}"
        return Verdict.DONE, f"HTTP {status}"
    if status == 429:
        return Verdict.RETRY, f"HTTP 429 (throttled){detail}"
    if status >= 500:
        return Verdict.RETRY, f"HTTP {status}{detail}"
    if status in (401, 403, 407):
        return Verdict.HOLD, f"HTTP {status}: the account's credentials are refused{detail}"
    return Verdict.FAILED, f"HTTP {status}{detail}"


def _error_text(body: bytes, values: Iterable[str] = ()) -> str:
    """CleverTap's error text, without any of ``values`` (it may quote one), cut at 200 characters."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not error:
        return ""
    text = str(error)
    for value in sorted(values, key=len, reverse=True):
        if value:
            text = re.sub(re.escape(value), "<value>", text, flags=re.IGNORECASE)
    return f": {text[:200]}"


# ------------------------------------------------------------------------------------------ requests


@dataclass
class PurgeCounts:
    by_place: Counter[str] = field(default_factory=Counter)
    in_flight: set[tuple[str, str]] = field(default_factory=set)  # (integration, batch) sent as rewritten


class Forgetter:
    """Runs forget requests: :meth:`ask` writes one, :meth:`run` takes it as far as it can go now."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: UploadClient | None = None,
        limiter: Limiter | None = None,
        rng: random.Random | None = None,
        dispatch: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client or UploadClient(settings.connect_timeout, settings.read_timeout)
        self.limiter = limiter or Limiter(RedisTokens(store))
        self.rng = rng or random.Random()
        self.dispatch = dispatch
        self.owner = secrets.token_hex(6)
        #: A request's lease, renewed while a process works on it (every step is shorter than a token's
        #: lease: a delete's HTTP deadline is): a killed process's request goes to another within this.
        self.lease_s = settings.token_lease

    # ------------------------------------------------------------------------------------------ ask

    def ask(self, who: Who, integrations: Sequence[str] | None = None, dispatching: bool = False) -> str:
        """Write a request and suppress the user's events at once; returns its id. The identities go to
        Redis only (never a task argument, a log line or a URL). ``dispatching``: the caller sends the
        task itself now (the sweep then leaves it for a lease's time)."""
        who = checked(who)
        names = list(dict.fromkeys(integrations or sorted(self.settings.integrations)))
        for name in names:
            self.settings.integration(name)  # UnknownIntegration names it
        if not names:
            raise InputError("no integration is configured: nothing to forget from")
        rid = new_id()
        now = self.store.now_ms()
        self.store.new_request(
            rid,
            {
                "state": State.PURGING.value,
                "asked": now,
                "integrations": names,
                "digests": digests_of(who),
                "who": who.as_dict(),
                "asked_for": who.counts(),
                "counts": {},
                "clevertap": {},
                "attempts": 0,
                **({"dispatched": now} if dispatching else {}),
            },
            due=now,  # on the sweep's list in the same step: a crash now leaves it to a worker
        )
        self._suppress(names, who)
        self.store.count_forget("requests")
        return rid

    def _suppress(self, names: Sequence[str], who: Who) -> None:
        until = self.store.now_ms() + int(self.settings.forget_suppress_days * 86_400_000)
        for name in names:
            self.store.suppress(name, digests_of(who), until)

    # ------------------------------------------------------------------------------------------ run

    def run(self, rid: str, delete: bool = True) -> str:
        """Take the request as far as it goes now: purge it if not yet done, then (with ``delete``) send what
        CleverTap still has to confirm, once it is due. Returns its state, "leased" when another process
        works on it, or "unserved" when this process does not serve one of its integrations (a worker
        that does takes it: the sweep hands it on again)."""
        owner = f"{self.owner}-{secrets.token_hex(4)}"
        if not self.store.request_lease(rid, "take", owner, self.lease_s):
            return "leased"
        try:
            req = self.store.request(rid)
            if req is None:
                return "missing"
            unserved = [n for n in req["integrations"] if n not in self.settings.integrations]
            if unserved and req["state"] in UNFINISHED:
                log.warning("forget %s: this process does not serve %s; left for a worker that does", rid,
                            ", ".join(unserved))  # fmt: skip
                self.store.update_request(rid, {}, due=self.store.now_ms() + 10_000)
                return "unserved"
            if req["state"] == State.PURGING:
                self._purge(rid, req, owner)
                req = self.store.request(rid) or req
            due = int(req.get("due", 0) or 0)
            if delete and req["state"] in (State.DELETING, State.HELD) and due <= self.store.now_ms():
                self._delete(rid, req, owner)
                req = self.store.request(rid) or req
            return str(req["state"])
        finally:
            try:
                self.store.request_lease(rid, "drop", owner)
            except OUTAGE_ERRORS as exc:
                log.warning("forget %s: lease not dropped (it ends by itself): %s", rid, where(exc))

    def _renew(self, rid: str, owner: str) -> None:
        if not self.store.request_lease(rid, "renew", owner, self.lease_s):
            raise LeaseLost(f"forget {rid}: the request's lease ended while this process worked on it")

    # ---------------------------------------------------------------------------------------- purge

    def _purge(self, rid: str, req: dict[str, Any], owner: str) -> None:
        """Remove every copy. The links come first, read-only (the identity map's userId <-> email, followed
        until nothing new), and are saved and suppressed before anything is removed: a process killed
        mid-purge leaves a request that still names everything it found."""
        started = time.monotonic()
        names = list(req["integrations"])
        known = Who.from_dict(req["who"])
        for _ in range(MAX_PASSES):
            fresh = Who()
            for name in names:
                fresh = fresh | self._identity_links(rid, owner, name, known)
            fresh = fresh.minus(known)
            if not fresh:
                break
            known = known | fresh
        self.store.update_request(rid, {"who": known.as_dict(), "digests": digests_of(known)})
        self._suppress(names, known)  # again: a crash in ask may have left some integration without
        # Counts so far: a process killed mid-purge saved what it had removed (each copy is removed, and
        # counted, once: the process that takes over does not find it again).
        counts = PurgeCounts(Counter({k: int(v) for k, v in (req.get("counts") or {}).items()}))
        # Batches being sent as they were rewritten are saved with the counts after each integration: a
        # process that takes over waits for them too (it finds nothing left to rewrite, so it would not
        # know of them).
        counts.in_flight = {(str(n), str(b)) for n, b in req.get("in_flight") or []}
        for name in names:
            self._remove(rid, owner, name, known, counts)
            self.store.update_request(
                rid, {"counts": dict(counts.by_place), "in_flight": sorted(counts.in_flight)}
            )
        self._broker(rid, owner, names, known, counts)
        # A batch sent as it was rewritten: its answer may write a dead letter or a debugger entry naming
        # them. Wait for its lease to end (the send's deadline is shorter), then look again.
        self._wait_for_sends(rid, owner, counts.in_flight)
        norms = known.normals()
        for name in names:
            self._dead_letters(rid, owner, name, norms, counts)
            self._debugger(name, known, counts)
        now = self.store.now_ms()
        self.store.update_request(
            rid,
            {
                "state": State.DELETING.value,
                "purged": now,
                "counts": dict(counts.by_place),
                "purge_s": round(time.monotonic() - started, 3),
            },
            state=(State.PURGING, State.DELETING),
            due=now,
        )
        log.info("forget %s: no copy left in the pipeline (%s)", rid, _counts_text(counts.by_place))

    def _identity_links(self, rid: str, owner: str, name: str, who: Who) -> Who:
        """The identity map's entries that link one of their values to another (read-only)."""
        norms = who.normals()
        found, cursor, steps = Who(), 0, 0
        while True:
            cursor, items = self.store.scan_hash(name, "ids", cursor, SCAN_COUNT)
            for uid_b, email_b in items.items():
                uid, email = uid_b.decode("utf-8", "replace"), email_b.decode("utf-8", "replace")
                if normal(uid) in norms or normal(email) in norms:
                    found = found | Who(identities=(email,), user_ids=(uid,))
            steps += 1
            if steps % 100 == 0:
                self._renew(rid, owner)
            if cursor == 0:
                return found

    def _remove(self, rid: str, owner: str, name: str, who: Who, counts: PurgeCounts) -> None:
        """One integration's copies, place by place."""
        norms = who.normals()
        counts.by_place["identity_map"] += self.store.forget_identities(name, list(who.user_ids))
        wanted = wanted_of(who.values())
        position, steps = 0, 0
        while True:
            position, end, removed = self.store.forget_pending_step(name, position, PENDING_STEP, wanted)
            counts.by_place["pending"] += len(removed)
            steps += 1
            if steps % 50 == 0:
                self._renew(rid, owner)
            if end:
                break
        for lane in self.store.active_imports(name):  # historical imports wait in lanes of their own
            position = 0
            while True:
                position, end, removed = self.store.forget_pending_step(
                    name, position, PENDING_STEP, wanted, lane
                )
                counts.by_place["backfill"] += len(removed)
                if end:
                    break
        self._batches(name, wanted, counts)
        self._renew(rid, owner)
        anonymous = self._dead_letters(rid, owner, name, norms, counts)
        visitors = [_visitor(a) for a in dict.fromkeys((*who.anonymous_ids, *anonymous))]
        counts.by_place["held"] += self.store.forget_held(name, visitors)
        self._debugger(name, who, counts)
        self._message_ids(rid, owner, name, who, counts)

    def _batches(self, name: str, wanted: list[str], counts: PurgeCounts) -> None:
        """Every open and held batch, and any made meanwhile (a split makes two of one), until a look finds
        none not seen."""
        seen: set[str] = set()
        while True:
            fresh = [b for b in self.store.batch_ids(name) if b not in seen]
            if not fresh:
                return
            for bid in fresh:
                seen.add(bid)
                removed, leased, _ = self.store.forget_in_batch(name, bid, wanted)
                if removed > 0:
                    counts.by_place["batches"] += removed
                    if leased:
                        counts.in_flight.add((name, bid))

    def _dead_letters(
        self, rid: str, owner: str, name: str, norms: set[str], counts: PurgeCounts
    ) -> list[str]:
        """Remove their dead letters (by the identifying fields of the record or event each holds); returns
        the anonymousIds of their events, whose anonymous hold goes too."""
        anonymous: list[str] = []
        drop: list[str] = []
        cursor, steps = 0, 0
        while True:
            cursor, items = self.store.scan_hash(name, "dead", cursor, SCAN_COUNT)
            for did, body in items.items():
                entry = _loads(body)
                if entry_names(entry, norms):
                    drop.append(did.decode())
                    anonymous += anonymous_ids_beside(_dict(entry).get("event"), norms)
            if len(drop) >= SCAN_COUNT:
                counts.by_place["dead_letters"] += self.store.drop_dead_letters(
                    name, drop, "forgotten_dead_letters"
                )
                drop = []
            steps += 1
            if steps % 100 == 0:
                self._renew(rid, owner)
            if cursor == 0:
                break
        counts.by_place["dead_letters"] += self.store.drop_dead_letters(name, drop, "forgotten_dead_letters")
        return anonymous

    def _debugger(self, name: str, who: Who, counts: PurgeCounts) -> None:
        norms = who.normals()
        emails = sorted({normal(v) for v in who.values() if "@" in v})
        matching, start = [], 0
        while True:
            page = self.store.debug_page(name, start, DEBUG_PAGE)
            matching += [entry for entry in page if debugger_names(entry, norms, emails)]
            if len(page) < DEBUG_PAGE:
                break
            start += DEBUG_PAGE
        counts.by_place["debugger"] += self.store.forget_debug_entries(name, list(dict.fromkeys(matching)))

    def _message_ids(self, rid: str, owner: str, name: str, who: Who, counts: PurgeCounts) -> None:
        """A messageId is an SDK's (a UUID), but one made upstream may hold an email: those go from the
        de-duplication window (their events are filtered as forgotten anyway). Only emails: a short id
        ("7") would match the messageIds of everyone."""
        emails = sorted({normal(v) for v in who.values() if "@" in v and len(v) >= 5})
        if not emails:
            return
        # the whole email, not part of a longer one (al@x.co is not in val@x.com)
        # (a prefix such as "signup-" or "x_" still counts: missing one leaves an email in Redis, a false
        # match only forgets a messageId's de-duplication)
        pattern = re.compile(
            "|".join(rf"(?<![a-z0-9.%+]){re.escape(e)}(?![a-z0-9]|[.-][a-z])" for e in emails)
        )
        cursor, steps = 0, 0
        while True:
            cursor, members = self.store.scan_seen(name, cursor, SCAN_COUNT)
            drop = [m for m in members if pattern.search(m.decode("utf-8", "replace").lower())]
            counts.by_place["message_ids"] += self.store.forget_seen(name, drop)
            steps += 1
            if steps % 100 == 0:
                self._renew(rid, owner)
            if cursor == 0:
                return

    def _broker(self, rid: str, owner: str, names: Sequence[str], who: Who, counts: PurgeCounts) -> None:
        """``clevertap.ingest`` messages that upstream jobs published carry their events: those still in
        Celery's broker (queued, or unacked: taken by a worker, or waiting for a retry) are rewritten
        without their events, each only if it is still there as read (a worker that took it meanwhile
        filters their events as it ingests them)."""
        url = self.settings.broker_url or self.settings.redis_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            # a sentinel:// broker: not read yet, and the request says so (status, the console's counts)
            log.warning("forget %s: the broker (%s) is not read for queued ingest messages", rid,
                        url.partition(":")[0])  # fmt: skip
            self.store.update_request(rid, {"broker_not_read": True})
            return
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        norms = who.normals()
        try:
            for n, (key, field, raw) in enumerate(broker_messages(client, C.INGEST_QUEUE)):
                rewritten = without_them(raw, bool(field), norms, names)
                if rewritten is not None and self.store.replace_message(
                    client, key, field, raw, rewritten[0]
                ):
                    counts.by_place["queued_events"] += rewritten[1]
                if n % 500 == 499:
                    self._renew(rid, owner)
        finally:
            client.close()

    def _wait_for_sends(self, rid: str, owner: str, in_flight: set[tuple[str, str]]) -> None:
        deadline = time.monotonic() + self.settings.token_lease * C.BATCH_LEASE_FACTOR + 5
        waiting = set(in_flight)
        while waiting and time.monotonic() < deadline:
            waiting = {(n, b) for n, b in waiting if self.store.batch_leased(n, b)}
            if waiting:
                time.sleep(0.2)
                self._renew(rid, owner)
        if waiting:
            log.warning("forget %s: %d batches still being sent past their lease; looking at the dead "
                        "letters and the debugger again now", rid, len(waiting))  # fmt: skip

    # --------------------------------------------------------------------------------------- delete

    def _delete(self, rid: str, req: dict[str, Any], owner: str) -> None:
        """Send what CleverTap has not confirmed yet, one request at a time; stop at the first that must
        wait (retry, hold) or fails."""
        now = self.store.now_ms()
        confirmed_now = False  # a confirmation in this run: a failure after it starts a new failure clock
        who = Who.from_dict(req.get("who") or {})
        progress: dict[str, Any] = dict(req.get("clevertap") or {})
        state = State(req["state"])
        for config in self._accounts(req["integrations"]):
            account = progress.setdefault(config.account_id, {"confirmed": [], "answers": []})
            for number, (kind, values) in enumerate(delete_bodies(who)):
                if number in account["confirmed"]:
                    continue
                self._renew(rid, owner)
                attempt = self._send_delete(config, delete_body(kind, values))
                if attempt is None:  # the account's slots are busy: shortly
                    self._save(rid, progress, state, State.DELETING, due=now + 1000)
                    return
                verdict, reason = judge_delete(attempt, who.values())  # its text may quote a value
                answer = {"request": number, "kind": kind, "values": len(values), "status": attempt.status,
                          "verdict": verdict.value, "reason": reason, "at": self.store.now_ms()}  # fmt: skip
                account["answers"] = [*account["answers"][-19:], answer]
                self.store.count_forget(f"delete:{attempt.status or 'error'}")
                if verdict is Verdict.DONE:
                    account["confirmed"].append(number)
                    confirmed_now = True
                    continue
                if confirmed_now:
                    req = {**req, "attempts": 0, "first_failure": 0}
                self._not_done(rid, req, progress, state, verdict, reason, config)
                return
        self._save(rid, progress, state, State.DONE, done=True)
        log.info("forget %s: CleverTap confirmed the delete in every account", rid)

    def _not_done(
        self,
        rid: str,
        req: dict[str, Any],
        progress: dict[str, Any],
        state: State,
        verdict: Verdict,
        reason: str,
        config: IntegrationConfig,
    ) -> None:
        now = self.store.now_ms()
        attempts = int(req.get("attempts", 0)) + 1
        first = int(req.get("first_failure", 0) or 0) or now
        extra = {"attempts": attempts, "first_failure": first, "error": reason}
        if verdict is Verdict.HOLD:
            log.error(
                "forget %s: CleverTap refuses account %s's credentials; held: %s",
                rid,
                config.account_id,
                reason,
            )
            self._save(
                rid,
                progress,
                state,
                State.HELD,
                due=now + int(self.settings.auth_probe_interval * 1000),
                extra=extra,
            )
        elif verdict is Verdict.RETRY and now - first < config.give_up_age * 1000:
            delay = max(0.5, full_jitter(attempts, DELETE_BACKOFF_BASE_S, DELETE_BACKOFF_CAP_S, self.rng))
            self._save(rid, progress, state, State.DELETING, due=now + int(delay * 1000), extra=extra)
        else:
            if verdict is Verdict.RETRY:
                extra["error"] = f"gave up after {config.give_up_age:g} s of failures: {reason}"
            log.error("forget %s: CleverTap's delete failed: %s (forget retry %s)", rid, extra["error"], rid)
            self.store.count_forget("failed")
            self._save(rid, progress, state, State.FAILED, extra=extra, close=True)

    def _save(
        self,
        rid: str,
        progress: dict[str, Any],
        old: State,
        new: State,
        due: int | None = None,
        done: bool = False,
        extra: dict[str, Any] | None = None,
        close: bool = False,
    ) -> None:
        fields: dict[str, Any] = {"clevertap": progress, "state": new.value, **(extra or {})}
        drop: tuple[str, ...] = ()
        if done:
            fields["done"] = self.store.now_ms()
            drop = ("who", "error")  # confirmed: only the digests remain
        self.store.update_request(rid, fields, state=(old, new), drop=drop, due=due, close=close or done)

    def _accounts(self, names: Sequence[str]) -> list[IntegrationConfig]:
        """One integration per CleverTap account and endpoint: a profile is deleted once per account."""
        seen: dict[tuple[str, str], IntegrationConfig] = {}
        for name in names:
            config = self.settings.integrations.get(name)
            if config is not None:
                seen.setdefault((config.account_id, config.delete_url), config)
        return list(seen.values())

    def _send_delete(self, config: IntegrationConfig, body: bytes) -> Attempt | None:
        """One delete under the account's delete slot (delete_concurrency) and one of its upload tokens; None
        when either stayed busy for TOKEN_WAIT_S."""
        account, lease = config.account_id, self.settings.token_lease
        deletes = self.store.delete_slots(account)
        slot = Limiter(deletes).acquire(account, self.settings.delete_concurrency, lease, TOKEN_WAIT_S)
        if slot is None:
            return None
        try:
            token = self.limiter.acquire(account, config.max_concurrency, lease, TOKEN_WAIT_S)
            if token is None:
                return None
            try:
                attempt = self.client.delete_profiles(config, body)
            finally:
                self.limiter.release(account, token, config.max_concurrency)
        finally:
            Limiter(deletes).release(account, slot, self.settings.delete_concurrency)
        return attempt

    # ---------------------------------------------------------------------------------------- sweep

    def sweep(self) -> list[str]:
        """Hand each unfinished request that is due, not leased and not handed out within a lease's time to
        ``dispatch`` (a message waiting in a busy queue is not joined by another every sweep). Returns the
        ids dispatched."""
        if self.dispatch is None:
            return []
        sent = []
        now = self.store.now_ms()
        for rid in self.store.due_requests(now, limit=1000):
            if self.store.request_leased(rid):
                continue
            if now - self.store.dispatched_at(rid) < self.lease_s * 1000:
                continue
            self.store.update_request(rid, {"dispatched": now})
            self.dispatch(rid)
            sent.append(rid)
        return sent

    def retry(self, rid: str) -> None:
        """A failed request goes again (after credentials or the account were fixed)."""
        req = self.store.request(rid)
        if req is None:
            raise InputError(f"no forget request {rid!r}")
        if req["state"] != State.FAILED:
            raise InputError(f"forget request {rid} is {req['state']}, not failed: nothing to retry")
        fields = {"state": State.DELETING.value, "attempts": 0, "first_failure": 0}
        states = (State.FAILED, State.DELETING)
        self.store.update_request(rid, fields, state=states, due=self.store.now_ms(), drop=("error",))


def without_them(
    raw: bytes, unacked: bool, norms: set[str], names: Sequence[str]
) -> tuple[bytes, int] | None:
    """A broker message (kombu's JSON envelope; in the unacked hash, [envelope, exchange, routing key]) of
    ``clevertap.ingest`` for one of ``names``, rewritten without the events that are theirs, and how many
    went; None when it is another task's, or holds none of theirs."""
    message = _loads(raw)
    envelope = _dict(message[0] if unacked and isinstance(message, list) and message else message)
    headers = _dict(envelope.get("headers"))
    if (
        headers.get("task") != "clevertap.ingest"
        or _dict(envelope.get("properties")).get("body_encoding") != "base64"
    ):
        return None
    try:
        body = orjson.loads(base64.b64decode(str(envelope.get("body", ""))))
        args, kwargs, embed = body
    except (ValueError, TypeError, orjson.JSONDecodeError):
        return None
    kwargs = _dict(kwargs)
    args = list(args) if isinstance(args, list) else []
    integration = args[1] if len(args) > 1 else kwargs.get("integration", "default")
    in_args = bool(args)
    events = args[0] if in_args else kwargs.get("events")
    if integration not in names or not isinstance(events, list):
        return None
    scrubbed, removed = scrub(events, norms)
    if not removed:
        return None
    if in_args:
        args[0] = scrubbed
    else:
        kwargs["events"] = scrubbed
    envelope["body"] = base64.b64encode(orjson.dumps([args, kwargs, embed])).decode()
    envelope["headers"] = {
        **headers,
        "argsrepr": f"[<{len(events)} events>]" if in_args else "()",
        "kwargsrepr": f"{{'integration': {integration!r}}}"
        + ("" if in_args else f" + <{len(events)} events>"),
    }
    out = [envelope, *message[1:]] if unacked and isinstance(message, list) else envelope
    return orjson.dumps(out), removed


#: What takes a forgotten user's event's place in a message that may be ingested (or resumed) later: the
#: events keep their positions, so a message resumed after its first chunks skips exactly those.
PLACEHOLDER: dict[str, Any] = {"forgotten": True}


def is_placeholder(raw: Any) -> bool:
    return isinstance(raw, dict) and raw == PLACEHOLDER


def scrub(events: list[Any], norms: set[str]) -> tuple[list[Any], int]:
    """``events`` with each of theirs replaced by PLACEHOLDER, and how many."""
    out = [PLACEHOLDER if any_of(event_values(e), norms) else e for e in events]
    return out, sum(1 for a, b in zip(out, events, strict=True) if a is PLACEHOLDER and b is not PLACEHOLDER)


def scrub_suppressed(events: list[Any], digests: dict[str, int]) -> list[Any]:
    """``events`` with each that a suppression list names replaced by PLACEHOLDER (a task about to be
    retried with them: the retry's message must not bring them back into the broker)."""
    if not digests:
        return events
    now_ms = int(time.time() * 1000)
    return [PLACEHOLDER if suppressed(event_values(e), digests, now_ms) else e for e in events]


class LeaseLost(RuntimeError):
    """Another process took the request over (this one was too slow to renew its lease): stop."""


def _visitor(anonymous_id: str) -> str:
    """The anonymous hold's key for an anonymousId (as ingest makes it)."""
    return hashlib.sha256(anonymous_id.encode("utf-8", "replace")).hexdigest()[:32]


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{place} {n}" for place, n in sorted(counts.items()) if n) or "nothing found"


def describe(req: dict[str, Any]) -> dict[str, Any]:
    """A request as status shows it: never the identities, only their digests and counts."""
    return {k: v for k, v in req.items() if k != "who"}
