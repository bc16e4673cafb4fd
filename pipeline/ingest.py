"""The producer: events in, CleverTap records queued in Redis, rejections dead-lettered with reasons.

``ingest(events)`` is the Python API upstream jobs call. It processes events in chunks: validate and map
each (pure), look up remembered emails for the chunk in one round trip, then queue the chunk's records,
identities, de-duplication marks and mapping dead letters in one atomic Redis script.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

import orjson
import redis

from pipeline.config import IntegrationConfig, Settings, load_settings
from pipeline.deadletters import mapping_dead_letter
from pipeline.errors import InputError, QueueFull, where
from pipeline.events import Event, validate_event
from pipeline.forget import event_values, is_placeholder, record_values, suppressed
from pipeline.mapping import (
    DUPLICATE,
    FILTERED,
    HELD,
    MAPPED,
    REJECTED,
    Mapper,
    MapResult,
    MapStatus,
    is_listed_out,
)
from pipeline.store import Ask, FieldsDropped, HeldEvents, Hold, KnownEmails, StaleForgotten, Store, new_id
from pipeline.tokens import NO_RECORD as NO_TOKEN_RECORD

#: Events per Redis round trip: big enough to amortise the round trip, small enough that one script
#: call stays well under a millisecond or two of Redis time.
CHUNK = 500


@dataclass
class Rejection:
    index: int  # 0-based position in the input (the CLI reports 1-based line numbers)
    reasons: list[str]


@dataclass
class IngestResult:
    accepted: int = 0
    filtered: int = 0
    duplicate: int = 0
    rejected: int = 0
    records: int = 0
    already_replayed: int = 0  # replayed dead letters another replay had queued already
    fields_dropped: int = 0  # profile values left out of records that were still sent (invalid_fields)
    held: int = 0  # anonymous events held until the visitor is known (anonymous = "hold")
    rejections: list[Rejection] = field(default_factory=list)
    warnings: list[Rejection] = field(default_factory=list)  # events sent with something left out, and why

    def counts(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "filtered": self.filtered,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "fields_dropped": self.fields_dropped,
            "held": self.held,
        }

    def add(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.filtered += other.filtered
        self.duplicate += other.duplicate
        self.rejected += other.rejected
        self.records += other.records
        self.already_replayed += other.already_replayed
        self.fields_dropped += other.fields_dropped
        self.held += other.held
        self.rejections.extend(other.rejections)
        self.warnings.extend(other.warnings)


@dataclass(frozen=True)
class IngestMessage:
    """Events that arrived together under an id (a task id), so a second delivery can resume."""

    id: str
    events: Sequence[Any]


@dataclass
class LineResult:
    """What became of one input line, for preview and per-line reporting."""

    index: int
    status: MapStatus
    records: list[dict[str, Any]]
    reasons: list[str]
    warnings: list[str] = field(default_factory=list)


#: Why an event naming a forgotten user is filtered (``clevertap-pipeline forget``).
FORGOTTEN = "forgotten: this user asked to be forgotten (forget_suppress_days)"
#: Tries of a chunk whose suppression list moves under it (a user forgotten at that very moment).
STALE_TRIES = 5

#: Redis errors that pass: a message that meets one is tried again later, from where it stopped.
TRANSIENT_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class Ingestor:
    """Ingest for one integration, reusing its compiled mapper across calls."""

    def __init__(self, store: Store, config: IntegrationConfig) -> None:
        self.store = store
        self.config = config
        self.mapper = Mapper(config)

    def _map_chunk(
        self,
        items: list[tuple[int, Any, Event | None, list[str]]],
        known: dict[str, str],
        now: int,
        forgotten: dict[str, int] | None = None,
    ) -> list[tuple[int, Any, MapResult, list[bytes]]]:
        """Map each validated event; a mapped event's records come encoded too (what is queued). An event
        that names a forgotten user (``forgotten``: digest -> ms suppressed until), as it came or as
        mapped, is filtered."""
        out: list[tuple[int, Any, MapResult, list[bytes]]] = []
        dumps = orjson.dumps
        now_ms = now * 1000
        for index, raw, event, errors in items:
            if is_placeholder(raw):  # a forgotten user's event, taken out of its message (pipeline.forget)
                out.append((index, raw, MapResult(FILTERED, reasons=[FORGOTTEN]), []))
                continue
            if event is None:
                out.append((index, raw, MapResult(REJECTED, reasons=errors), []))
                continue
            if forgotten and suppressed(event_values(raw), forgotten, now_ms):
                out.append((index, raw, MapResult(FILTERED, reasons=[FORGOTTEN]), []))
                continue
            email = known.get(event.user_id) if event.user_id and not event.email else None
            encoded: list[bytes] = []
            try:
                result = self.mapper.map(event, email, now)
                encoded = [dumps(r) for r in result.records]
            except TypeError as exc:  # orjson's: e.g. an integer over 64 bits, which no JSON reader takes
                result = MapResult(REJECTED, reasons=[f"a value cannot be sent as JSON: {exc}"])
            except Exception as exc:  # a bug meets an event nobody foresaw: that event, not the chunk
                result = MapResult(REJECTED, reasons=[f"internal error while mapping: {where(exc)}"])
            if forgotten and any(suppressed(record_values(r), forgotten, now_ms) for r in result.records):
                result, encoded = MapResult(FILTERED, reasons=[FORGOTTEN]), []
            if result.identity_update is not None:
                uid, mail = result.identity_update
                known[uid] = mail  # later events of this chunk see it, as they would across chunks
            out.append((index, raw, result, encoded))
        return out

    def _validated(self, chunk: list[tuple[int, Any]]) -> list[tuple[int, Any, Event | None, list[str]]]:
        items: list[tuple[int, Any, Event | None, list[str]]] = []
        for index, raw in chunk:
            if isinstance(raw, _BadInput):
                items.append((index, raw.text, None, [raw.reason]))
            else:
                try:
                    event, errors = validate_event(raw)
                except Exception as exc:
                    event, errors = None, [f"internal error while validating: {where(exc)}"]
                items.append((index, raw, event, errors))
        return items

    def _lookup(self, items: list[tuple[int, Any, Event | None, list[str]]]) -> dict[str, str]:
        need = _needing_email(items)
        return self.store.known_emails(self.config.name, need) if need else {}

    def ingest_chunk(
        self,
        chunk: list[tuple[int, Any]],
        lines: list[LineResult] | None = None,
        replaces: Sequence[str] | None = None,
        progress: tuple[str, int] | None = None,
    ) -> IngestResult:
        """Validate, map and queue one chunk in one atomic step. ``replaces``, for a replay, gives per event
        the mapping dead letter it replaces; ``progress`` ``(message id, chunks done)`` is stored with it.
        Events naming a forgotten user are filtered with this process's view of the suppression list; the
        enqueue refuses a view older than the list's, and the chunk is mapped again with the new one."""
        for steps in self._tries(chunk, lines, replaces, progress):
            try:
                ask = next(steps)
                while True:
                    ask = steps.send(self.store.run(ask))
            except StopIteration as done:
                return cast(IngestResult, done.value)
            except StaleForgotten:
                continue
        raise AssertionError("unreachable")

    async def ingest_chunk_async(self, chunk: list[tuple[int, Any]], client: Any) -> IngestResult:
        """:meth:`ingest_chunk` on an event loop: its round trips to Redis (the emails it needs, the held
        events it releases, the enqueue) go through ``client``, a ``redis.asyncio`` client for the store's
        Redis, so the loop serves other requests meanwhile. The same steps, keys and atomic enqueue."""
        for steps in self._tries(chunk, None, None, None):
            try:
                ask = next(steps)
                while True:
                    ask = steps.send(await self.store.run_async(client, ask))
            except StopIteration as done:
                return cast(IngestResult, done.value)
            except StaleForgotten:
                continue
        raise AssertionError("unreachable")

    def _tries(
        self,
        chunk: list[tuple[int, Any]],
        lines: list[LineResult] | None,
        replaces: Sequence[str] | None,
        progress: tuple[str, int] | None,
    ) -> Iterator[Generator[Ask, Any, IngestResult]]:
        """The chunk's steps, mapped with this process's view of the suppression list, then (after each
        StaleForgotten) with the list read again; StaleForgotten past STALE_TRIES."""
        for attempt in range(STALE_TRIES):
            gen, forgotten = self.store.forgotten_view(self.config.name, refresh=attempt > 0)
            yield self._steps(chunk, lines, replaces, progress, gen, forgotten)
        raise StaleForgotten(
            f"{self.config.name}: the suppression list kept changing during {STALE_TRIES} tries"
        )

    def _steps(
        self,
        chunk: list[tuple[int, Any]],
        lines: list[LineResult] | None,
        replaces: Sequence[str] | None,
        progress: tuple[str, int] | None,
        forgotten_gen: str,
        forgotten: dict[str, int],
    ) -> Generator[Ask, Any, IngestResult]:
        """One chunk's ingest, which yields what it asks of Redis (each a round trip) and is sent the
        answers: the same steps whether a blocking client answers or an asyncio one."""
        items = self._validated(chunk)
        need = _needing_email(items)
        known: dict[str, str] = (yield KnownEmails(self.config.name, need)) if need else {}
        now = int(time.time())
        mapped = self._map_chunk(items, known, now, forgotten)
        hold = Hold(limit=self.config.anonymous_hold_max) if self.config.anonymous == "hold" else None
        released, claims, links = (
            (yield from self._released(mapped, known, now, forgotten)) if hold is not None else ([], [], {})
        )
        for position, (index, raw, result, _) in enumerate(mapped):
            # held, but this very chunk says who the visitor is: mapped under that identity at once
            if result.status == HELD and (visitor := _visitor_of(raw)) in links:
                now_known = [(index, _claimed(raw, links[visitor]))]
                mapped[position] = self._map_chunk(self._validated(now_known), known, now, forgotten)[0]
        res = IngestResult()
        groups: list[tuple[str, list[bytes], str]] = []
        group_index: list[int] = []
        group_claims: list[str] = []
        identities: list[tuple[str, str]] = []
        dead: list[tuple[str, bytes, str]] = []
        drops: list[str] = []
        filtered = rejected = forgotten_n = listed_n = tokens_left = 0
        # A visitor's held events go first, in the order they came, under the identity now known; one that
        # no longer maps becomes a mapping dead letter (with its reasons), as it would have on arrival.
        for visitor, result, raw, encoded in released:
            if result.status == MAPPED:
                groups.append((str(raw.get("messageId") or ""), encoded, ""))
                group_index.append(-1)
                group_claims.append(visitor)
            elif result.status == REJECTED:
                did, body = mapping_dead_letter(self.config.name, raw, result.reasons)
                dead.append((did, body, ""))
        group_notes: list[tuple[list[str], list[str]]] = []  # per queued event: keys left out, warnings
        per_line: dict[int, LineResult] = {}
        group_notes.extend(([], []) for _ in groups)
        for position, (index, raw, result, encoded) in enumerate(mapped):
            replaced = replaces[position] if replaces else ""
            if result.status == MAPPED:
                if result.identity_update is not None:
                    identities.append(result.identity_update)
                groups.append((str(raw.get("messageId") or ""), encoded, replaced))
                group_index.append(index)
                group_claims.append("")
                group_notes.append((result.dropped, result.warnings))
                tokens_left += any(w.endswith(NO_TOKEN_RECORD) for w in result.warnings)
            elif (
                result.status == HELD
                and hold is not None
                and (visitor := _visitor_of(raw)) is not None
                and (entry := _held_entry(raw)) is not None
            ):  # held (a replayed one only if its dead letter is still there: the script checks)
                hold.held.append((visitor, entry, replaced))
            elif result.status == FILTERED:
                filtered += 1
                forgotten_n += result.reasons == [FORGOTTEN]
                listed_n += is_listed_out(result.reasons)
                if replaced:
                    drops.append(replaced)
            else:
                reasons = result.reasons if result.status != HELD else [_TOO_BIG_TO_HOLD]
                rejected += 1
                res.rejections.append(Rejection(index, reasons))
                did, body = mapping_dead_letter(self.config.name, raw, reasons)
                dead.append((did, body, replaced))
            if lines is not None:
                per_line[index] = LineResult(
                    index, result.status, result.records, result.reasons, result.warnings
                )
        # rejected_mapping is counted by the script, for the dead letters it actually adds
        counters = {
            "filtered": filtered,
            "forgotten": forgotten_n,
            "events_listed_out": listed_n,
            "tokens_left_out": tokens_left,
        }
        if hold is not None:
            hold.group_claims = group_claims
            hold.claims = claims
            # held events filtered now (no consent, say) count as filtered
            counters["filtered"] += sum(1 for _, r, _, _ in released if r.status == FILTERED)
            counters["forgotten"] += sum(1 for _, r, _, _ in released if r.reasons == [FORGOTTEN])
        pushed, skipped, dups = yield self.store.enqueue_call(
            self.config.name,
            groups,
            identities,
            dead,
            counters,
            self.config.dedup_window,
            drops,
            progress,
            self.config.identity_retention,
            self.config.max_pending,
            hold,
            forgotten_gen,
        )
        if forgotten_n and hold is not None:
            # their anonymous events held from before the forget: they would be released under them later
            visitors = {
                v for _, raw, result, _ in mapped if result.reasons == [FORGOTTEN] and (v := _visitor_of(raw))
            }
            if visitors:
                self.store.forget_held(self.config.name, sorted(visitors))
        res.filtered, res.rejected, res.duplicate = filtered, rejected, len(dups)
        res.accepted = len(groups) - len(dups) - skipped
        if hold is not None:
            res.held = len(hold.held) - hold.full
            res.filtered += hold.full
        res.records = pushed
        res.already_replayed = skipped
        # Fields left out count for events queued, not for duplicates (counters only: after the enqueue).
        dup_set = set(dups)
        dropped_by_key: dict[str, int] = {}
        for g, (dropped, warnings) in enumerate(group_notes):
            if g in dup_set:
                continue
            for key in dropped:
                dropped_by_key[key] = dropped_by_key.get(key, 0) + 1
            if warnings:
                res.warnings.append(Rejection(group_index[g], warnings))
        res.fields_dropped = sum(dropped_by_key.values())
        if dropped_by_key:
            yield FieldsDropped(self.config.name, dropped_by_key)
        if lines is not None:
            for g in dups:
                if group_index[g] < 0:  # a released held event: not a line of this input
                    continue
                o = per_line[group_index[g]]
                o.status, o.records, o.reasons = DUPLICATE, [], ["duplicate messageId within the window"]
            lines.extend(per_line[i] for i in sorted(per_line))
        return res

    def _released(
        self,
        mapped: list[tuple[int, Any, MapResult, list[bytes]]],
        known: dict[str, str],
        now: int,
        forgotten: dict[str, int],
    ) -> Generator[
        Ask,
        Any,
        tuple[
            list[tuple[str, MapResult, Any, list[bytes]]],
            list[tuple[str, bytes, bytes, int]],
            dict[str, dict[str, str]],
        ],
    ]:
        """The held events of every visitor this chunk's mapped events say who is (an anonymousId beside
        an email or a userId), mapped under that identity with their own times, oldest first, each with
        its visitor's key; and the claim on each visitor's held entries (first, last, how many) that the
        enqueue checks before it releases them."""
        links: dict[str, dict[str, str]] = {}
        for _, raw, result, _ in mapped:
            visitor = _visitor_of(raw)
            if result.status != MAPPED or visitor is None:
                continue
            record = result.records[0] if result.records else {}
            user_id = raw.get("userId")
            who = (
                {"userId": str(user_id)}
                if isinstance(user_id, str | int) and not isinstance(user_id, bool)
                else {}
            )
            if record.get("identity"):
                who["email"] = str(record["identity"])
            if who:
                links.setdefault(visitor, who)
        if not links:
            return [], [], {}
        out = []
        claims = []
        held: dict[str, list[bytes]] = yield HeldEvents(self.config.name, sorted(links))
        for visitor, entries in held.items():
            who = links[visitor]
            events = [_claimed(event, who, held_at) for event, held_at in map(_unheld, entries)]
            items = self._validated(list(enumerate(events)))
            for _, raw, result, encoded in self._map_chunk(items, known, now, forgotten):
                out.append((visitor, result, raw, encoded))
            claims.append((visitor, entries[0], entries[-1], len(entries)))
        return out, claims, links

    def ingest_message(self, message: IngestMessage) -> IngestResult:
        """Ingest a message that may be delivered more than once (a Celery task retried, or redelivered
        after a worker died): chunks already queued for ``message.id`` are skipped, so nothing is queued
        twice and a retry resumes where the last try stopped."""
        done = self.store.chunks_done(self.config.name, message.id)
        total = IngestResult()
        for number, chunk in enumerate(chunked(enumerate(message.events), CHUNK), start=1):
            if number <= done:
                continue
            try:
                total.add(self.ingest_chunk(chunk, progress=(message.id, number)))
            except (*TRANSIENT_REDIS_ERRORS, QueueFull, StaleForgotten):
                raise  # Redis is away, the queue is full, or users are being forgotten: tried again later
            except Exception as exc:  # anything else would fail the same way again: keep the events visible
                reason = f"could not be queued: {where(exc)}"
                # but never a forgotten user's (no enqueue script filters these)
                _, forgotten = self.store.forgotten_view(self.config.name, refresh=True)
                now_ms = int(time.time() * 1000)
                letters = [
                    mapping_dead_letter(self.config.name, raw, [reason])
                    for _, raw in chunk
                    if not is_placeholder(raw)
                    and not (forgotten and suppressed(event_values(raw), forgotten, now_ms))
                ]
                self.store.keep_unqueued(self.config.name, letters, (message.id, number))
                total.add(IngestResult(rejected=len(letters), filtered=len(chunk) - len(letters)))
        # Kept a little longer than a redelivery can take (the broker's visibility timeout), not for ever.
        self.store.finish_message(self.config.name, message.id)
        return total

    def ingest(self, events: Iterable[Any], lines: list[LineResult] | None = None) -> IngestResult:
        total = IngestResult()
        for chunk in chunked(enumerate(events), CHUNK):
            total.add(self.ingest_chunk(chunk, lines))
        return total

    def preview(self, numbered: Iterable[tuple[int, Any]], check_store: bool = True) -> Iterator[LineResult]:
        """Map ``(line number, event)`` pairs without queueing. Uses remembered identities and the
        de-duplication window when the store is reachable (``check_store``), read-only; a messageId
        repeated in the input is a duplicate too."""
        seen: set[str] = set()
        for chunk in chunked(numbered, CHUNK):
            items = self._validated(chunk)
            known = self._lookup(items) if check_store else {}
            mids = [str(e.message_id) for _, _, e, _ in items if e is not None and e.message_id]
            dup_store = (
                self.store.seen_message_ids(self.config.name, mids, self.config.dedup_window)
                if check_store
                else set()
            )
            forgotten = self.store.forgotten_view(self.config.name)[1] if check_store else None
            for index, raw, result, _ in self._map_chunk(items, known, int(time.time()), forgotten):
                mid = str(raw.get("messageId") or "") if isinstance(raw, dict) else ""
                if result.status == MAPPED and mid and self.config.dedup_window > 0:
                    if mid in seen or mid in dup_store:
                        # not queued again; the records show what it maps to (what went the first time)
                        reason = "duplicate messageId within the window: not queued again"
                        yield LineResult(index, DUPLICATE, result.records, [reason], result.warnings)
                        continue
                    seen.add(mid)
                yield LineResult(index, result.status, result.records, result.reasons, result.warnings)


def _needing_email(items: list[tuple[int, Any, Event | None, list[str]]]) -> list[str]:
    """The userIds of a chunk's events that come without an email: their remembered ones are looked up."""
    return sorted({e.user_id for _, _, e, _ in items if e is not None and e.user_id and not e.email})


def _visitor_of(raw: Any) -> str | None:
    """A visitor's key in ``anon:*``: a digest of its anonymousId (text or a number, any length, any
    characters); None without one."""
    anonymous = raw.get("anonymousId") if isinstance(raw, dict) else None
    if isinstance(anonymous, bool) or not isinstance(anonymous, str | int) or anonymous == "":
        return None
    return hashlib.sha256(str(anonymous).encode("utf-8", "replace")).hexdigest()[:32]


#: A held event is kept whole up to a single call's size (Segment's 32 KB): the hold's cap counts events.
MAX_HELD_BYTES = 32 * 1024
_TOO_BIG_TO_HOLD = (
    f"anonymous: too large or too deeply nested to hold until the visitor is known (at most "
    f"{MAX_HELD_BYTES // 1024} KB)"
)


def _held_entry(raw: Any) -> bytes | None:
    """What the hold keeps of an anonymous event: its id (and when it was held) and the event; None when
    it cannot be held (over MAX_HELD_BYTES, or nested deeper than JSON writes): then a dead letter."""
    try:
        entry = orjson.dumps({"id": new_id(), "event": raw}, default=str)
    except TypeError:
        return None
    return entry if len(entry) <= MAX_HELD_BYTES else None


def _unheld(entry: bytes) -> tuple[Any, str]:
    """A held entry's event, and when it was held (ISO 8601: an id starts with its epoch ms)."""
    held = orjson.loads(entry)
    ms = int(str(held.get("id", ""))[:13] or 0)
    return held["event"], datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _claimed(event: Any, who: dict[str, str], held_at: str | None = None) -> Any:
    """A held event as the visitor's identity now known makes it: its userId, and the email in
    context.traits (where the mapper looks), its own time (the time it was held, if it had none) and
    everything else as it came."""
    if not isinstance(event, dict):
        return event
    out = {**event, **({"userId": who["userId"]} if "userId" in who else {})}
    if held_at is not None and not any(k in out for k in ("timestamp", "originalTimestamp", "sentAt")):
        out["timestamp"] = held_at
    if "email" in who:
        context: dict[str, Any] = out["context"] if isinstance(out.get("context"), dict) else {}
        traits: dict[str, Any] = context["traits"] if isinstance(context.get("traits"), dict) else {}
        out["context"] = {**context, "traits": {**traits, "email": who["email"]}}
    return out


class _BadInput:
    """An input line that is not JSON: rejected like any bad event, with its line's text kept."""

    __slots__ = ("reason", "text")

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason


def bad_input(text: str, reason: str) -> Any:
    return _BadInput(text, reason)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ------------------------------------------------------------------------------------------ public API


def ingest(
    events: Iterable[Any],
    integration: str = "default",
    *,
    settings: Settings | None = None,
    store: Store | None = None,
) -> IngestResult:
    """Validate, consent-filter, map and queue ``events`` for ``integration``.

    Returns the counts (accepted, filtered, duplicate, rejected) and each rejection with its reasons; the
    rejected events are also kept as dead letters (stage ``mapping``) in Redis.
    """
    if settings is None:
        settings = load_settings()
    config = settings.integration(integration)
    return Ingestor(store or Store.for_settings(settings), config).ingest(events)


def read_events(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, event)`` from JSON lines or one JSON array (numbered by element, from 1).

    A line that is not JSON yields a bad-input marker that ingest rejects with the parse error (naming the
    line); input that starts as an array but is not one is an InputError."""
    head = stream.peek(64)[:64] if isinstance(stream, io.BufferedReader) else b""
    if head.lstrip().startswith(b"["):
        data = stream.read()
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"input starts with '[' but is not a JSON array: {exc}") from None
        yield from enumerate(items, start=1)
        return
    for n, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            yield n, orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            snippet = text[:80].decode("utf-8", "replace")
            yield n, bad_input(snippet, f"not JSON: {exc} (line starts {snippet!r})")
