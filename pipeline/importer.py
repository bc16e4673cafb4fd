"""An import run: a file's rows read, mapped (:mod:`pipeline.imports`, or the integration's preset for
Segment-style events) and queued in the integration's backfill lane (:mod:`pipeline.backfill`), a chunk at a
time, each chunk with its checkpoint in one atomic step.

- **Resume, exactly once.** An import's id is derived from the integration, the file (its size and a
  SHA-256 of all of it) and the options that shape its records, so the same command run again finds
  it and skips the rows its checkpoint says are queued. A chunk is written only if the checkpoint is still
  where this run read from: a second importer of the same file, or a chunk resent after a lost answer,
  never queues a row twice.
- **A window.** At most ``import_window`` records of an import are in Redis at once (queued, not yet
  delivered or dead-lettered): a chunk that would pass it waits for delivery, so memory is bounded by the
  window, not the file.
- **Bad rows** become mapping dead letters with the row, its line and the reasons, in the chunk's step,
  and are reported to the caller; they never stop the import.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from pipeline import constants as C
from pipeline.backfill import PushOutcome
from pipeline.config import IntegrationConfig
from pipeline.deadletters import dead_letter
from pipeline.errors import PipelineError
from pipeline.forget import event_values, record_values, row_values, suppressed
from pipeline.imports import A_YEAR_S, CsvMapper, CsvSpec, RowError, check_record, read_csv
from pipeline.ingest import FORGOTTEN, Ingestor, read_events
from pipeline.mapping import FILTERED, HELD, MAPPED
from pipeline.store import Store, new_id

#: Rows mapped and queued per atomic step: a step's Redis call stays a few ms, a kill loses no more.
CHUNK = 1000
#: How often a run whose window is full looks again (delivery frees room a batch at a time).
WINDOW_POLL_S = 0.2
#: Read at a time to digest a file for its identity.
FINGERPRINT_BLOCK = 1 << 20
#: Formats: Segment-style events mapped by the preset, ready CleverTap records, CSV rows.
FORMATS = ("events", "records", "csv")


class ImportFailed(PipelineError):
    """An import cannot go on (cancelled, taken over by another run, the file changed): nothing is lost,
    what was queued stays queued, and the message says what to do."""


def fingerprint(path: str) -> str:
    """The file's identity for resuming: its size and a SHA-256 of all of it (a file changed anywhere, even
    to the same size, is another import: a resume never continues at row N of different rows)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(FINGERPRINT_BLOCK):
            h.update(block)
            size += len(block)
    return f"{size}:{h.hexdigest()[:32]}"


def import_id(integration: str, file_identity: str, shape: dict[str, Any]) -> str:
    """The id the same file with the same options always gets (``shape``: format, type, event, schema,
    column renames)."""
    text = orjson.dumps([integration, file_identity, shape], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()[:16]


@dataclass
class Progress:
    """A run so far: rows read (in the file, from its start), records queued, rows refused or filtered, and
    bytes of the file read (for a progress bar's ETA)."""

    rows: int = 0
    queued: int = 0
    refused: int = 0
    filtered: int = 0
    old: int = 0
    tokens: int = 0  # push tokens left out (an import sends no token records)
    bytes_read: int = 0
    skipped: int = 0  # rows a resumed run did not read again (already queued)
    waited_s: float = 0.0  # time spent waiting for the window to free room
    errors: list[RowError] = field(default_factory=list)


@dataclass
class _Mapped:
    records: list[bytes] = field(default_factory=list)
    letters: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    filtered: int = 0
    old: int = 0
    tokens: int = 0


class Source:
    """Rows of one file in one format: numbered items to map, and how to map a chunk of them."""

    def __init__(
        self,
        stream: IO[bytes],
        fmt: str,
        config: IntegrationConfig,
        store: Store,
        spec: CsvSpec | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format: one of {', '.join(FORMATS)}")
        self.stream, self.format, self.config, self.store = stream, fmt, config, store
        self.csv = CsvMapper(spec) if fmt == "csv" and spec is not None else None
        self.ingestor = Ingestor(store, config) if fmt == "events" else None

    def items(self) -> Iterator[tuple[int, Any]]:
        if self.format == "csv":
            return read_csv(self.stream)
        if self.format == "events":
            return read_events(self.stream)
        return _lines(self.stream)

    def map(self, chunk: list[tuple[int, Any]], forgotten: dict[str, int], name: str, iid: str) -> _Mapped:
        """Map a chunk: its records (encoded), the dead letters of its bad rows, the rows filtered."""
        now_s = int(time.time())
        now_ms = now_s * 1000
        out = _Mapped()

        def refuse(line: int, row: Any, errors: list[RowError], event: bool = False) -> None:
            values = event_values(row) if event else row_values(row)
            if forgotten and suppressed(values, forgotten, now_ms):
                out.filtered += 1  # a forgotten user's row: not kept, not even as a dead letter
                return
            reasons = [f"{e.column}: {e.reason}" if e.column else e.reason for e in errors]
            fields: dict[str, Any] = {"reasons": reasons, "line": line, "import": iid}
            fields["event" if event else "row"] = row
            out.letters.append(dead_letter(name, "mapping", **fields))
            out.errors.extend(errors)

        def take(record: dict[str, Any]) -> None:
            if forgotten and suppressed(record_values(record), forgotten, now_ms):
                out.filtered += 1
                return
            ts = record.get("ts")
            if isinstance(ts, int) and ts < now_s - A_YEAR_S:
                out.old += 1
            out.records.append(orjson.dumps(record))

        if self.csv is not None:
            for line, row in chunk:
                record, errors = self.csv.record(line, row)
                if record is None:
                    refuse(line, {k: v for k, v in row.items() if not k.startswith("\0")}, errors)
                else:
                    take(record)
        elif self.format == "records":
            for line, raw in chunk:
                if isinstance(raw, RowError):
                    refuse(line, None, [raw])
                    continue
                reasons = check_record(raw, self.config.max_event_properties)
                if reasons:
                    refuse(line, raw, [RowError(line, None, r) for r in reasons])
                else:
                    take(raw)
        else:
            assert self.ingestor is not None
            items = self.ingestor._validated(chunk)
            known = self.ingestor._lookup(items)
            for line, raw, result, encoded in self.ingestor._map_chunk(items, known, now_s, forgotten):
                if result.status == MAPPED:
                    for record, body in zip(result.records, encoded, strict=True):
                        if record.get("type") == "token":
                            # a push token from history is likely stale, and the lane cuts batches of up
                            # to 1,000 (CleverTap takes 100 tokens a request): live traffic sends tokens
                            out.tokens += 1
                            continue
                        ts = record.get("ts")
                        if isinstance(ts, int) and ts < now_s - A_YEAR_S:
                            out.old += 1
                        out.records.append(body)
                elif result.status == FILTERED:
                    out.filtered += 1
                    if result.reasons != [FORGOTTEN]:
                        out.errors.append(RowError(line, None, "filtered: " + "; ".join(result.reasons)))
                elif result.status == HELD:  # an import holds no anonymous event for a later identify
                    refuse(line, raw, [RowError(line, None, "anonymous: no identity (an import holds none)")],
                           event=True)  # fmt: skip
                else:
                    refuse(line, raw, [RowError(line, None, r) for r in result.reasons], event=True)
        return out


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """JSON lines of ready records: (line, record), or (line, RowError) for a line that is not JSON."""
    for n, raw in enumerate(stream, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            yield n, orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield n, RowError(n, None, f"not JSON: {exc}")


class Importer:
    """One run of one import: reads from its checkpoint, queues chunk by chunk within the window."""

    def __init__(
        self,
        store: Store,
        config: IntegrationConfig,
        import_id: str,
        window: int,
        chunk: int = CHUNK,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store, self.config, self.id = store, config, import_id
        self.window = max(1, window)
        self.chunk = max(1, min(chunk, self.window))
        self.sleep = sleep

    def run(
        self,
        source: Source,
        start_rows: int,
        on_chunk: Callable[[Progress], None] | None = None,
        position: Callable[[], int] | None = None,
    ) -> Progress:
        """Skip the ``start_rows`` rows already queued, then queue the rest; returns the run's progress
        (``on_chunk`` sees it after every chunk). Marks the file read at its end."""
        name = self.config.name
        progress = Progress(rows=start_rows, skipped=start_rows)
        items: Iterable[tuple[int, Any]] = itertools.islice(source.items(), start_rows, None)
        for chunk in _chunks(iter(items), self.chunk):
            mapped: _Mapped | None = None
            refresh = False
            waited = 0.0
            for _ in range(C.IMPORT_STALE_TRIES):
                gen, forgotten = self.store.forgotten_view(name, refresh=refresh)
                mapped = source.map(chunk, forgotten, name, self.id)
                pos = position() if position else 0
                counters = {"filtered": mapped.filtered, "old": mapped.old}
                while True:
                    outcome, n = self.store.push_import(
                        name, self.id, (progress.rows, progress.rows + len(chunk)), mapped.records,
                        mapped.letters, counters, self.window, gen, pos if position else None,
                    )  # fmt: skip
                    if outcome != PushOutcome.FULL:
                        break
                    t0 = time.monotonic()
                    self.sleep(WINDOW_POLL_S)
                    waited += time.monotonic() - t0
                if outcome == PushOutcome.STALE:
                    refresh = True
                    continue
                break
            else:
                raise ImportFailed(f"{name}: the suppression list kept changing; run the import again")
            assert mapped is not None
            if outcome == PushOutcome.STOPPED:
                state = self.store.__dict__.get("_stopped_state", "")
                if state == "cancelled":
                    raise ImportFailed(f"import {self.id} was cancelled: nothing more is queued")
                raise ImportFailed(
                    f"import {self.id} is {state or 'gone'}: another run finished reading it (or it was "
                    "removed); `import status` shows it"
                )
            if outcome == PushOutcome.MOVED:
                raise ImportFailed(
                    f"import {self.id}: another run of this import moved its checkpoint to row {n}; only one "
                    "run at a time queues a file (this one stops, nothing was queued twice)"
                )
            progress.rows += len(chunk)
            if outcome == PushOutcome.QUEUED:
                progress.queued += len(mapped.records)
                progress.refused += len(mapped.letters)
                progress.filtered += mapped.filtered
                progress.old += mapped.old
                progress.tokens += mapped.tokens
                progress.errors.extend(mapped.errors)
            progress.bytes_read = pos
            progress.waited_s += waited
            if on_chunk is not None:
                on_chunk(progress)
        self.store.end_import(name, self.id, progress.rows)
        return progress


def _chunks(items: Iterator[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def begin(store: Store, config: IntegrationConfig, path: str, shape: dict[str, Any]) -> tuple[str, str, int]:
    """Start or find the import of ``path`` ('-': standard input, a new import each time, no resume):
    (id, state, rows already queued)."""
    if path == "-":
        iid = hashlib.sha256(new_id().encode()).hexdigest()[:16]
        size = 0
    else:
        iid = import_id(config.name, fingerprint(path), shape)
        size = os.path.getsize(path)
    fields = {
        "file": "-" if path == "-" else os.path.abspath(path),
        "format": str(shape.get("format", "")),
        "kind": str(shape.get("type") or ""),
        "size": str(size),
    }
    state, rows = store.begin_import(config.name, iid, fields)
    return iid, state, rows
