"""Historical imports: rows of a CSV file (or ready CleverTap records) turned into the records an upload
sends, each checked by CleverTap's limits, every bad row named by its line and column. Pure: reading and
mapping only (``clevertap-pipeline import --dry-run`` prints what they come to); queueing them is the
backfill lane's.

A CSV's header row names its columns. ``identity``, ``email`` or ``objectId`` gives the record's identity,
``ts`` its time (epoch seconds or milliseconds, or ISO 8601 with a zone), ``evtName`` an event's name
(else ``--event``); every other column is an ``evtData`` or ``profileData`` key, renamed by ``--columns``
and typed by ``--schema`` as CleverTap's own uploader takes them (Float, Integer, Boolean, String, Date,
String[]). Without a schema, whole numbers, decimals and true/false are recognised; a value with a leading
zero ("007", a ZIP code) stays text.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import orjson

from pipeline import constants as C
from pipeline.errors import InputError
from pipeline.mapping import check_event_name

#: Column types a schema may name (CleverTap's uploader's), and what each value becomes.
TYPES = ("Float", "Integer", "Boolean", "String", "Date", "String[]")
#: Columns that are not properties: they say who, when and what.
IDENTITY_COLUMNS = ("identity", "email", "objectId")
SPECIAL = (*IDENTITY_COLUMNS, "ts", "evtName")
#: Separator of a String[] cell's values (CleverTap's uploader reads a list the same way).
LIST_SEPARATOR = ","
_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+([eE][-+]?[0-9]+)?")
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}
#: The key a row gets when it has more cells than the header (no header can be named so).
_EXTRA = "\0extra"
#: The key a row gets when it cannot be read (bytes that are not UTF-8, a cell past the csv module's limit).
_UNREADABLE = "\0unreadable"
#: An epoch above this is in milliseconds (in seconds it would be after the year 5138).
_MS_FROM = 10**11
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class RowError:
    """One thing wrong with one row: its line in the file (1-based; the header is line 1) and column."""

    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class CsvSpec:
    """How to read one CSV: records of ``kind`` (event or profile), the event's name when no evtName
    column gives it, header -> CleverTap key renames, and column -> type."""

    kind: str
    event: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    schema: Mapping[str, str] = field(default_factory=dict)
    max_event_properties: int = C.DEFAULT_MAX_EVENT_PROPERTIES


def load_schema(text: str, source: str) -> dict[str, str]:
    """A ``--schema`` file: a JSON object of column -> type; InputError names what is wrong."""
    data = _json_object(text, source)
    for column, kind in data.items():
        if kind not in TYPES:
            raise InputError(f"{source}: column {column!r}: type {kind!r} is not one of {', '.join(TYPES)}")
    return {str(k): str(v) for k, v in data.items()}


def load_columns(text: str, source: str) -> dict[str, str]:
    """A ``--columns`` file: a JSON object of CSV header -> CleverTap key."""
    data = _json_object(text, source)
    for header, key in data.items():
        if not isinstance(key, str) or not key or len(key) > C.MAX_KEY_CHARS:
            raise InputError(f"{source}: header {header!r}: the key must be 1-{C.MAX_KEY_CHARS} characters")
    return {str(k): str(v) for k, v in data.items()}


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{source}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: must be a JSON object")
    return data


def read_csv(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line the row starts on, the row by header) for every row: a BOM, quoted newlines and blank lines
    handled. A header repeated, or a row with more cells than the header, is an InputError naming it."""
    # Bytes that are not UTF-8 decode to surrogates (not an error that would stop every row after it): the
    # row holding them is refused, named by its own line.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _rows(csv.reader(text))
    finally:
        if not stream.closed:
            text.detach()  # the caller's stream stays the caller's: the wrapper must not close it


def _rows(reader: Any) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("the file is empty: a CSV starts with its header row") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"line 1: not a CSV header row: {exc}") from None
    if any(_SURROGATE.search(h) for h in header):
        raise InputError("line 1: the header row is not UTF-8 text (save the file as UTF-8)")
    names = [h.strip() for h in header]
    repeated = sorted({h for h in names if names.count(h) > 1})
    if repeated:
        raise InputError(f"line 1: column {repeated[0]!r} appears twice in the header")
    if not any(names):
        raise InputError("line 1: the header row names no column")
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # this row only: the reader goes on with the next line
            line, start = start, reader.line_num + 1
            yield line, {_UNREADABLE: f"not CSV: {exc}"}
            continue
        line, start = start, reader.line_num + 1
        if any(_SURROGATE.search(c) for c in cells):
            yield line, {_UNREADABLE: "not UTF-8 text (save the file as UTF-8)"}
            continue
        if not cells or all(not c.strip() for c in cells):
            continue  # a blank line (a trailing one, say)
        if len(cells) > len(names):
            yield line, {_EXTRA: str(len(cells) - len(names))}
            continue
        yield line, {name: cell for name, cell in zip(names, cells, strict=False) if name}


class CsvMapper:
    """Rows of one CSV into CleverTap records."""

    def __init__(self, spec: CsvSpec) -> None:
        if spec.kind not in ("event", "profile"):
            raise InputError(f"--type must be event or profile, got {spec.kind!r}")
        if spec.event is not None and check_event_name(spec.event):
            raise InputError(f"--event: {check_event_name(spec.event)[0]}")
        self.spec = spec
        self.data_key = "evtData" if spec.kind == "event" else "profileData"

    def record(self, line: int, row: Mapping[str, str]) -> tuple[dict[str, Any] | None, list[RowError]]:
        """The record a row makes, or None and every reason it cannot be sent."""
        if _EXTRA in row:
            return None, [RowError(line, None, f"{row[_EXTRA]} more cells than the header has columns")]
        if _UNREADABLE in row:
            return None, [RowError(line, None, row[_UNREADABLE])]
        errors: list[RowError] = []
        renamed: dict[str, tuple[str, str]] = {}  # key -> (column, value)
        for column, value in row.items():
            renamed[self.spec.columns.get(column, column)] = (column, value.strip())
        record: dict[str, Any] = {"type": self.spec.kind}
        who = next(((k, renamed[k]) for k in IDENTITY_COLUMNS if renamed.get(k, ("", ""))[1]), None)
        if who is None:
            errors.append(
                RowError(line, None, "no identity: an identity, email or objectId column, not empty")
            )
        else:
            key, (column, value) = who
            record["objectId" if key == "objectId" else "identity"] = value
        column, ts_text = renamed.get("ts", ("ts", ""))
        if ts_text:
            ts, problem = parse_time(ts_text)
            if problem:
                errors.append(RowError(line, column, problem))
            record["ts"] = ts
        elif self.spec.kind == "event":
            errors.append(RowError(line, "ts", "an event needs its time: a ts column, not empty"))
        if self.spec.kind == "event":
            column, name = renamed.get("evtName", ("evtName", self.spec.event or ""))
            if not name:
                errors.append(RowError(line, "evtName", "no event name: an evtName column or --event"))
            else:
                errors += [RowError(line, column, r) for r in check_event_name(name)]
                record["evtName"] = name
        data: dict[str, Any] = {}
        for key, (column, text) in renamed.items():
            if key in SPECIAL or text == "":
                continue
            value, problem = self._value(column, key, text)
            if problem:
                errors.append(RowError(line, column, problem))
                continue
            data[key] = value
        if self.spec.kind == "event" and len(data) > self.spec.max_event_properties:
            most = self.spec.max_event_properties
            reason = f"{len(data)} properties, CleverTap allows at most {most} (max_event_properties)"
            errors.append(RowError(line, None, reason))
        record[self.data_key] = data
        return (None, errors) if errors else (record, [])

    def _value(self, column: str, key: str, text: str) -> tuple[Any, str | None]:
        if len(key) > C.MAX_KEY_CHARS:
            return None, f"key is {len(key)} characters, CleverTap allows at most {C.MAX_KEY_CHARS}"
        kind = self.spec.schema.get(column) or self.spec.schema.get(key)
        value, problem = typed(text, kind) if kind else (guessed(text), None)
        if problem:
            return None, problem
        if kind == "String[]" and self.spec.kind != "profile":
            return None, "String[] is a profile's multi-value: an event's property cannot be one"
        for item in value["$add"] if isinstance(value, dict) else [value]:
            if isinstance(item, str) and len(item.encode("utf-8")) > C.MAX_VALUE_BYTES:
                size = len(item.encode("utf-8"))
                return None, f"value is {size} bytes, CleverTap allows at most {C.MAX_VALUE_BYTES}"
        return value, None


def typed(text: str, kind: str) -> tuple[Any, str | None]:
    """A cell as its schema type says, or why it is not one."""
    if kind == "String":
        return text, None
    if kind == "Integer":
        if re.fullmatch(r"[-+]?[0-9]+", text):
            number = int(text)
            if -(2**63) <= number < 2**63:
                return number, None
        return None, f"{_shown(text)} is not an Integer"
    if kind == "Float":
        try:
            real = float(text)
        except ValueError:
            return None, f"{_shown(text)} is not a Float"
        return (real, None) if math.isfinite(real) else (None, f"{_shown(text)} is not a finite Float")
    if kind == "Boolean":
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE, None
        return None, f"{_shown(text)} is not a Boolean (true/false, yes/no, 1/0)"
    if kind == "Date":
        epoch, problem = parse_time(text)
        return (None, problem) if problem else (f"$D_{epoch}", None)
    if kind == "String[]":
        items = [t.strip() for t in text.split(LIST_SEPARATOR) if t.strip()]
        return {"$add": items}, None
    raise AssertionError(kind)  # load_schema checked it


def guessed(text: str) -> Any:
    """A cell without a schema: a whole number, a decimal or true/false when it is one, else the text (a
    leading zero keeps it text: "007" is a code, not 7)."""
    if _INT.fullmatch(text):
        number = int(text)
        return number if -(2**63) <= number < 2**63 else text
    if _FLOAT.fullmatch(text):
        return float(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    return text


def parse_time(text: str) -> tuple[int, str | None]:
    """Epoch seconds from epoch seconds or milliseconds, or ISO 8601 with a zone; or why not."""
    if re.fullmatch(r"[0-9]{1,16}", text):
        number = int(text)
        return (number // 1000 if number >= _MS_FROM else number), None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return 0, f"{_shown(text)} is not a time: epoch seconds or milliseconds, or ISO 8601 with a zone"
    if when.tzinfo is None:
        return 0, f"{_shown(text)} has no zone: write it with Z or an offset (+02:00), or as epoch seconds"
    return int(when.timestamp()), None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def check_record(record: Any, max_event_properties: int = C.DEFAULT_MAX_EVENT_PROPERTIES) -> list[str]:
    """Why CleverTap would refuse a ready record (``import --records``): the same limits as mapping's
    pre-flight; [] when it can be sent as it is."""
    if not isinstance(record, dict):
        return ["a record must be a JSON object"]
    kind = record.get("type")
    if kind not in ("event", "profile"):
        return [f"type: must be event or profile, got {str(kind)[:40]!r}"]
    reasons = []
    identity = record.get("identity", record.get("objectId"))
    if isinstance(identity, bool) or not isinstance(identity, str | int) or identity == "":
        reasons.append("no identity: an identity or objectId, not empty")
    ts = record.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 0):
        reasons.append("ts: epoch seconds, a whole number")
    if kind == "event":
        name = record.get("evtName")
        if not isinstance(name, str) or not name:
            reasons.append("evtName: an event needs its name")
        else:
            reasons += check_event_name(name)
        if ts is None:
            reasons.append("ts: an event needs its time")
    key = "evtData" if kind == "event" else "profileData"
    data = record.get(key, {})
    if not isinstance(data, dict):
        return [*reasons, f"{key}: must be a JSON object"]
    if kind == "event" and len(data) > max_event_properties:
        reasons.append(f"{key}: {len(data)} properties, CleverTap allows at most {max_event_properties}")
    for name, value in data.items():
        if len(name) > C.MAX_KEY_CHARS:
            reasons.append(f"{key}.{name[:40]}...: key is {len(name)} characters, at most {C.MAX_KEY_CHARS}")
        elif isinstance(value, str) and len(value.encode("utf-8")) > C.MAX_VALUE_BYTES:
            reasons.append(f"{key}.{name}: value is over {C.MAX_VALUE_BYTES} bytes")
        elif isinstance(value, dict | list) and not (
            name == C.ITEMS_KEY or (kind == "profile" and _command(value))
        ):
            reasons.append(f"{key}.{name}: nested value; CleverTap takes nested values only in Items")
    return reasons


def _command(value: Any) -> bool:
    """A profile command (``{"$add": [...]}``, ``$remove``, ``$delete``)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("$add", "$remove", "$delete")


# ----------------------------------------------------------------------------------- whole files

#: Rows kept by a summary to show (every bad one is counted; the first ERRORS_KEPT are kept to print).
ERRORS_KEPT = 1000
#: CleverTap's dashboard shows the last year only.
A_YEAR_S = 365 * 86400

Mapped = tuple[int, dict[str, Any] | None, list[RowError]]


def csv_records(stream: IO[bytes], spec: CsvSpec) -> Iterator[Mapped]:
    """(line, record or None, errors) for every row of a CSV."""
    mapper = CsvMapper(spec)
    for line, row in read_csv(stream):
        record, errors = mapper.record(line, row)
        yield line, record, errors


def ready_records(
    stream: IO[bytes], max_event_properties: int = C.DEFAULT_MAX_EVENT_PROPERTIES
) -> Iterator[Mapped]:
    """(line, record or None, errors) for every line of JSON lines of ready CleverTap records (blank lines
    skipped; a line that is not JSON is a bad row, named)."""
    for n, raw in enumerate(stream, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield n, None, [RowError(n, None, f"not JSON: {exc}")]
            continue
        reasons = check_record(record, max_event_properties)
        yield (n, None, [RowError(n, None, r) for r in reasons]) if reasons else (n, record, [])


@dataclass
class ImportSummary:
    """What a file comes to (``import --dry-run``): counts, the first records, the bad rows."""

    rows: int = 0
    records: int = 0
    refused: int = 0
    older_than_a_year: int = 0  # CleverTap's dashboard shows the last 365 days only
    first: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)  # the first ERRORS_KEPT

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "records": self.records, "refused": self.refused,
                "older_than_a_year": self.older_than_a_year}  # fmt: skip


def summarise(mapped: Iterator[Mapped], now_s: int, show: int = 5) -> ImportSummary:
    """Every row mapped, nothing queued: the counts, the first ``show`` records and the bad rows."""
    out = ImportSummary()
    for _, record, errors in mapped:
        out.rows += 1
        if record is None:
            out.refused += 1
            if len(out.errors) < ERRORS_KEPT:
                out.errors.extend(errors[: ERRORS_KEPT - len(out.errors)])
            continue
        out.records += 1
        ts = record.get("ts")
        if isinstance(ts, int) and ts < now_s - A_YEAR_S:
            out.older_than_a_year += 1
        if len(out.first) < show:
            out.first.append(record)
    return out
