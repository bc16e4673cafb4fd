"""A CleverTap Upload API emulator: a real HTTP server for demos, tests and benchmarks.

It answers ``POST /1/upload`` as ``docs/clevertap-api.md`` describes the real service: credentials per
account (401), malformed bodies and over-size batches (400), per-record checks with CleverTap's codes and
"Skipped record number : N" (partial / fail), and 429 past the account's concurrency limit. Faults can be
injected: latency, 500/503s, 429s (with or without Retry-After), connections cut after the records were
stored, and outage windows. ``GET /_emulator/stats`` and ``GET /_emulator/records`` show what happened.
``POST /1/delete/profiles.json`` (Delete User Profile) checks its body (identity or guid, never both; at
most 100 values) and records what it deleted: ``GET /_emulator/deleted``.

Its checks are written from the API description, apart from :mod:`pipeline.mapping`, so that the pipeline's
pre-flight and the emulator can disagree, and the tests notice when they do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from pipeline import constants as C

DEMO_ACCOUNT = ("DEMO-ACCOUNT", "demo-passcode")
IDENTITY_KEYS = ("identity", "objectId", "FBID", "GPID")
RESTRICTED_EVENTS = frozenset(
    n.replace(" ", "").lower()
    for n in (
        "App Launched", "App Installed", "App Uninstalled", "Notification Sent", "Notification Viewed",
        "Notification Clicked", "UTM Visited", "Stayed", "Identity Set", "Identity Reset", "Identity Error",
        "Push Impressions", "Channel Unsubscribed", "Geocluster Entered", "Geocluster Exited",
        "State Transitioned", "Session Concluded",
    )
)  # fmt: skip


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def normalise_name(name: str) -> str:
    return name.replace(" ", "").lower()


def parse_outage(text: str) -> tuple[float, float]:
    start, sep, length = text.partition(":")
    try:
        if not sep:
            raise ValueError
        value = (float(start), float(length))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--outage must be START:DURATION in seconds, got {text!r}"
        ) from None
    if value[0] < 0 or value[1] <= 0:
        raise argparse.ArgumentTypeError(f"--outage must have START >= 0 and DURATION > 0, got {text!r}")
    return value


#: Fault settings that one account may have differently from the rest (--account-fault ID:KEY=VALUE).
PER_ACCOUNT = ("latency_ms", "jitter_ms", "error_rate", "throttle_rate", "concurrency", "held_slots")


def parse_account_fault(text: str) -> tuple[str, dict[str, float]]:
    account, sep, settings = text.partition(":")
    changes: dict[str, float] = {}
    for item in settings.split(","):
        key, eq, value = item.partition("=")
        if not sep or not eq or key.strip() not in PER_ACCOUNT:
            raise argparse.ArgumentTypeError(
                f"--account-fault must be ID:KEY=VALUE[,KEY=VALUE] with KEY one of {', '.join(PER_ACCOUNT)}, "
                f"got {text!r}"
            )
        changes[key.strip()] = float(value)
    return account, changes


def fault(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    many: Callable[[Any], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A fault setting and its command-line flag (``--latency-ms`` for ``latency_ms``): ``parse`` reads one
    flag value; ``many`` makes the flag repeatable and collects its values."""
    return field(default=default, metadata={"help": help, "parse": parse, "many": many, "metavar": metavar})


@dataclass(frozen=True)
class Faults:
    """What the emulator does wrong on purpose. Shares are probabilities per request (0..1). Each field is
    also a flag of ``clevertap-pipeline emulator`` and a key of ``POST /_emulator/faults``."""

    latency_ms: float = fault(0.0, "fixed latency per upload", non_negative)
    jitter_ms: float = fault(0.0, "random extra latency, 0..N ms", non_negative)
    error_rate: float = fault(0.0, "share of uploads answered 500/503 (half each), nothing stored", share)
    throttle_rate: float = fault(0.0, "share of uploads answered 429, nothing stored", share)
    retry_after: float | None = fault(
        None, "Retry-After seconds on injected 429s (none: no header)", non_negative
    )
    cut_rate: float = fault(
        0.0, "share of uploads whose records are stored, then the connection is cut without an answer", share
    )
    outages: tuple[tuple[float, float], ...] = fault(
        (), "answer 503 from START to START+DURATION seconds after start (repeatable)", parse_outage,
        many=tuple, metavar="START:DURATION",
    )  # fmt: skip
    concurrency: int = fault(C.MAX_CONCURRENCY, "requests in flight per account before 429", int)
    max_properties: int = fault(C.DEFAULT_MAX_EVENT_PROPERTIES, "evtData properties before code 522", int)
    held_slots: int = fault(
        0, "slots of each account held by another client: 429 past concurrency - held", int
    )
    per_account: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = fault(
        (), "another setting for one account, e.g. ACC-2:latency_ms=5000 or ACC-3:error_rate=1 (repeatable)",
        parse_account_fault, many=lambda pairs: tuple((a, tuple(sorted(c.items()))) for a, c in pairs),
        metavar="ID:KEY=VALUE[,KEY=VALUE]",
    )  # fmt: skip
    restricted_events: frozenset[str] = fault(
        frozenset(), "another event name answered 513, e.g. 'Web Page Viewed' as some accounts (repeatable)",
        normalise_name, many=frozenset, metavar="NAME",
    )  # fmt: skip

    @staticmethod
    def flag(f: Field[Any]) -> str:
        """The command-line flag of a fault setting: repeatable ones are singular."""
        if f.name == "per_account":
            return "--account-fault"
        name = f.name.removesuffix("s") if f.metadata["many"] else f.name
        return "--" + name.replace("_", "-")

    def for_account(self, account: str) -> Faults:
        """The faults one account sees: the common ones, with its own settings on top."""
        for name, changes in self.per_account:
            if name == account:
                own: dict[str, Any] = {
                    k: int(v) if k in ("concurrency", "held_slots") else v for k, v in changes
                }
                return replace(self, **own)
        return self

    def updated(self, changes: dict[str, Any]) -> Faults:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        if "outages" in changes:
            changes["outages"] = tuple(tuple(o) for o in changes["outages"])
        if "per_account" in changes:  # {"ACC": {"latency_ms": 5000}}
            changes["per_account"] = tuple(
                (a, tuple(sorted((k, float(v)) for k, v in c.items() if k in PER_ACCOUNT)))
                for a, c in dict(changes["per_account"]).items()
            )
        if "restricted_events" in changes:
            changes["restricted_events"] = frozenset(normalise_name(n) for n in changes["restricted_events"])
        return replace(self, **changes)


def _fail(code: int, short: str, detail: str) -> tuple[int, str]:
    return code, f"{short}. ErrorCode: {code} - {detail}"


_SHORT = C.MAX_VALUE_BYTES // 4  # a string this short cannot be over 512 bytes in UTF-8
_RECORD_TYPES = frozenset(("event", "profile"))


def check_record(rec: Any, faults: Faults) -> tuple[int, str] | None:
    """CleverTap's per-record checks. None when the record would be stored. Runs once per record, so it
    checks types directly rather than through helpers."""
    if type(rec) is not dict:
        return _fail(524, "Record type is incorrect", "Record is neither event nor profile")
    rtype = rec.get("type")
    if rtype == "token":
        return _check_token(rec)
    if rtype not in _RECORD_TYPES:
        return _fail(524, "Record type is incorrect", "Record is neither event nor profile")
    ident = rec.get("identity") or rec.get("objectId") or rec.get("FBID") or rec.get("GPID")
    if not ident or (type(ident) is not str and type(ident) is not int):
        return _fail(523, "Identity not found", "Identity, objectId, FBID or GPID is mandatory")
    if "ts" in rec:
        ts = rec["ts"]
        if type(ts) is not int or not 0 <= ts < 10_000_000_000:
            return _fail(525, "Timestamp is incorrect", "ts must be a UNIX epoch in seconds")
    if rtype == "event":
        name = rec.get("evtName")
        if type(name) is not str or not name.strip():
            return _fail(509, "Event Name is incorrect", "Event name is mandatory")
        norm = normalise_name(name)
        if norm in RESTRICTED_EVENTS or norm in faults.restricted_events:
            return _fail(513, "Event name is restricted", f"{name} is a restricted system event name")
        data = rec.get("evtData", _NO_DATA)
    else:
        data = rec.get("profileData", _NO_DATA)
    if type(data) is not dict:
        return _fail(512, "Invalid event structure", "Event data must be an object")
    if rtype == "profile":
        problem = _check_profile(data)
        if problem:
            return problem
    if len(data) > faults.max_properties:
        return _fail(522, "Event properties limit exceeded", f"At most {faults.max_properties} properties")
    for key, value in data.items():
        kind = type(value)
        if kind is str:
            if len(value) > _SHORT and len(value.encode("utf-8")) > C.MAX_VALUE_BYTES:
                return _fail(512, "Invalid event structure", f"Value of {key[:40]} exceeds 512 bytes")
        elif kind is dict and rtype == "profile" and _profile_command(value):
            continue  # {"$add": [...]}, {"$remove": [...]}, {"$delete": true}: a multi-value command
        elif (kind is dict or kind is list) and not (key == C.ITEMS_KEY and rtype == "event"):
            return _fail(512, "Invalid event structure", "Only Items can have a nested structure")
    return None


_NO_DATA: dict[str, Any] = {}
_TOKEN_TYPES = frozenset(("fcm", "gcm", "apns", "wns", "mpns", "chrome"))


def _check_token(rec: dict[str, Any]) -> tuple[int, str] | None:
    """Upload Device Tokens' checks, codes 530-535 (docs/clevertap-api.md), read from CleverTap's
    documentation apart from the pipeline's mapping (pipeline/tokens.py)."""
    object_id = rec.get("objectId")
    if not object_id or type(object_id) is not str:
        return _fail(530, "Invalid objectId", "objectId is mandatory for a token record")
    data = rec.get("tokenData")
    if type(data) is not dict:
        return _fail(531, "Invalid token data", "tokenData must be an object")
    if not data.get("id") or type(data.get("id")) is not str:
        return _fail(532, "Token id missing", "tokenData.id is mandatory")
    kind = data.get("type")
    if not kind:
        return _fail(533, "Token type missing", "tokenData.type is mandatory")
    if kind not in _TOKEN_TYPES:
        return _fail(
            534, "Token type not valid", "tokenData.type must be fcm, gcm, apns, wns, mpns or chrome"
        )
    keys = data.get("keys")
    if kind == "chrome" and not (
        type(keys) is dict and type(keys.get("p256dh")) is str and type(keys.get("auth")) is str
    ):
        return _fail(535, "Invalid data", "a chrome token needs keys.p256dh and keys.auth")
    return None


def _profile_command(value: dict[str, Any]) -> bool:
    """A profile command on a multi-value property (docs/clevertap-api.md): ``$add`` / ``$remove`` with up to
    100 strings, or ``$delete: true``."""
    if len(value) != 1:
        return False
    ((op, arg),) = value.items()
    if op in ("$add", "$remove"):
        return type(arg) is list and 0 < len(arg) <= 100 and all(type(v) is str for v in arg)
    return op == "$delete" and arg is True


# CleverTap's built-in profile keys, checked as CleverTap documents them (docs/clevertap-api.md, "Profile
# fields"), independently of the pipeline's converters (pipeline/profile.py): the tests hold one against the
# other. Codes 514-520 are CleverTap's; which code a bad DOB or MSG-* flag gets is not documented (520, the
# age code, and 512 here).
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_DATE_RE = re.compile(r"^\$D_-?[0-9]+$")
_PROFILE_CHECKS: dict[str, tuple[Callable[[Any], bool], int, str]] = {
    "Gender": (lambda v: v in ("M", "F"), 514, "Gender value is invalid, it must be M or F"),
    "Email": (lambda v: type(v) is str and bool(_EMAIL_RE.match(v)), 515, "Email is invalid"),
    "Phone": (lambda v: type(v) is str and bool(_PHONE_RE.match(v)), 516, "Phone number is invalid"),
    "Employed": (lambda v: v in ("Y", "N"), 517, "Employment status is invalid, it must be Y or N"),
    "Education": (
        lambda v: v in ("School", "College", "Graduate"), 518,
        "Education status is invalid, it must be School, College or Graduate",
    ),
    "Married": (lambda v: v in ("Y", "N"), 519, "Marital status is invalid, it must be Y or N"),
    "Age": (lambda v: type(v) is int and 0 <= v <= 150, 520, "Age is invalid"),
    "DOB": (lambda v: type(v) is str and bool(_DATE_RE.match(v)), 520, "DOB is invalid, must be $D_<epoch>"),
    "MSG-email": (lambda v: type(v) is bool, 512, "MSG-email must be true or false"),
    "MSG-push": (lambda v: type(v) is bool, 512, "MSG-push must be true or false"),
    "MSG-sms": (lambda v: type(v) is bool, 512, "MSG-sms must be true or false"),
    "MSG-whatsapp": (lambda v: type(v) is bool, 512, "MSG-whatsapp must be true or false"),
}  # fmt: skip


def _check_profile(data: dict[str, Any]) -> tuple[int, str] | None:
    for key, (valid, code, detail) in _PROFILE_CHECKS.items():
        if key in data and not valid(data[key]):
            return _fail(code, "Invalid profile field", detail)
    return None


def check_delete(body: bytes) -> tuple[str, str, list[str]]:
    """(problem or '', kind, values) of a Delete User Profile body, as docs/clevertap-api.md describes it."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "Malformed request: the body is not JSON", "", []
    if not isinstance(payload, dict):
        return "Malformed request: the body must be a JSON object", "", []
    kinds = [k for k in ("identity", "guid") if k in payload]
    if len(kinds) != 1:
        return "Malformed request: send either identity or guid", "", []
    raw = payload[kinds[0]]
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(isinstance(v, str) and v for v in values):
        return f"Malformed request: {kinds[0]} must be a string or a list of strings", "", []
    if len(values) > C.MAX_DELETE_VALUES:
        return f"Max {C.MAX_DELETE_VALUES} are allowed", "", []
    return "", kinds[0], values


class EmulatorState:
    """Accounts, faults, counters and stored records, shared by the request threads."""

    def __init__(
        self, accounts: dict[str, str], faults: Faults, seed: int | None, record_file: IO[str] | None
    ):
        self.accounts = dict(accounts)
        self.faults = faults
        self.rng = random.Random(seed)
        self.record_file = record_file
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        # Per account, in arrival order: an accepted upload's whole body (split only when read back), or
        # the encoded records a partial upload stored.
        self.records: dict[str, list[bytes | list[bytes]]] = defaultdict(list)
        self.stored_by_account: Counter[str] = Counter()
        self.throttled_by_account: Counter[str] = Counter()  # 429s, for concurrency or injected
        self.requests_by_account: Counter[str] = Counter()
        # Delete User Profile requests that succeeded, per account, in arrival order: (kind, value).
        self.deleted: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def roll(self, share: float) -> bool:
        if share <= 0:
            return False
        with self.lock:
            return self.rng.random() < share

    def in_outage(self) -> bool:
        elapsed = time.monotonic() - self.started
        return any(start <= elapsed < start + length for start, length in self.faults.outages)

    def enter(self, account: str) -> bool:
        with self.lock:
            faults = self.faults.for_account(account)
            if self.in_flight[account] >= faults.concurrency - faults.held_slots:
                self.counters["concurrency_429"] += 1
                self.throttled_by_account[account] += 1
                return False
            self.in_flight[account] += 1
            self.peak[account] = max(self.peak[account], self.in_flight[account])
            return True

    def leave(self, account: str) -> None:
        with self.lock:
            self.in_flight[account] -= 1

    def store(
        self, account: str, stored: bytes | list[bytes], count: int, rejected: int, answer_at: float = 0.0
    ) -> None:
        with self.lock:
            self.counters["max_records_per_request"] = max(
                self.counters["max_records_per_request"], count + rejected
            )
            self.records[account].append(stored)
            self.stored_by_account[account] += count
            self.counters["records_stored"] += count
            self.counters["records_rejected"] += rejected
            if self.record_file is not None:
                at = int((answer_at or time.time()) * 1000)  # when it is answered: delivered, for latencies
                for rec in _split(stored):
                    self.record_file.write(
                        f'{{"account":{json.dumps(account)},"at":{at},"record":{rec.decode()}}}\n'
                    )
                self.record_file.flush()

    def count_tokens(self, n: int, mixed: bool) -> None:
        with self.lock:
            self.counters["token_requests"] += 1
            self.counters["token_mixed_requests"] += mixed
            self.counters["token_records"] += n
            self.counters["max_tokens_per_request"] = max(self.counters["max_tokens_per_request"], n)

    def stored_records(self, account: str | None) -> list[bytes]:
        with self.lock:
            chunks = [c for a, cs in self.records.items() if account in (None, a) for c in cs]
        return [rec for chunk in chunks for rec in _split(chunk)]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": sum(self.by_status.values()),
                "requests_by_status": dict(sorted(self.by_status.items())),
                "records_stored": self.counters["records_stored"],
                "records_rejected": self.counters["records_rejected"],
                "concurrency_429": self.counters["concurrency_429"],
                "max_records_per_request": self.counters["max_records_per_request"],
                # requests holding push token records, those records, and the most in one request
                "token_requests": self.counters["token_requests"],
                "token_records": self.counters["token_records"],
                "max_tokens_per_request": self.counters["max_tokens_per_request"],
                "token_mixed_requests": self.counters["token_mixed_requests"],  # tokens beside other records
                "injected": {k: self.counters[k] for k in ("throttled", "errors", "cut", "outage")},
                "in_flight": dict(self.in_flight),
                "peak_in_flight": dict(self.peak),
                "stored_by_account": dict(self.stored_by_account),
                "throttled_by_account": dict(self.throttled_by_account),
                "requests_by_account": dict(self.requests_by_account),
                "deleted_by_account": {a: len(v) for a, v in self.deleted.items()},
            }

    def reset(self) -> None:
        with self.lock:
            self.records.clear()
            self.stored_by_account.clear()
            self.throttled_by_account.clear()
            self.requests_by_account.clear()
            self.deleted.clear()
            self.by_status.clear()
            self.counters.clear()
            self.peak.clear()


#: An answer (status, body, headers), or None: cut the connection without one.
Reply = tuple[int, dict[str, Any], dict[str, str]] | None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the pipeline's pooled session reuses connections
    # An answer is written as headers, then body: without TCP_NODELAY, Nagle's algorithm holds the body
    # back until the client's delayed ACK of the headers, about 40 ms on every upload.
    disable_nagle_algorithm = True
    server: EmulatorServer
    started = 0.0
    answer_at = 0.0

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stats tell the story
        pass

    def _send(self, status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/json; charset=utf-8" if body else "application/x-ndjson"
        )
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)
        with self.server.state.lock:
            self.server.state.by_status[str(status)] += 1

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        state = self.server.state
        if url.path == "/_emulator/stats":
            self._send_plain(orjson.dumps(state.stats()))
        elif url.path == "/_emulator/deleted":
            account = parse_qs(url.query).get("account", [None])[0]
            with state.lock:
                found = {a: [list(x) for x in v] for a, v in state.deleted.items() if account in (None, a)}
            self._send_plain(orjson.dumps(found))
        elif url.path == "/_emulator/records":
            account = parse_qs(url.query).get("account", [None])[0]
            self._send_plain(b"".join(r + b"\n" for r in state.stored_records(account)), ndjson=True)
        else:
            self._send(404, {"status": "fail", "error": "Not found", "code": 404})

    def _send_plain(self, payload: bytes, ndjson: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson" if ndjson else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        self.started = time.monotonic()  # an upload's latency counts from here: reading it is part of it
        url = urlsplit(self.path)
        state = self.server.state
        if url.path == "/_emulator/reset":
            self._body()
            state.reset()
            return self._send_plain(b'{"reset":true}')
        if url.path == "/_emulator/faults":
            try:
                state.faults = state.faults.updated(orjson.loads(self._body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return self._send(400, {"status": "fail", "error": str(exc), "code": 400})
            return self._send_plain(b'{"updated":true}')
        if url.path == "/1/delete/profiles.json":
            return self._serve(self._process_delete)
        if url.path != "/1/upload":
            self._body()
            return self._send(404, {"status": "fail", "error": "Not found", "code": 404})
        dry_run = parse_qs(url.query).get("dryRun", ["0"])[0] == "1"
        self._serve(lambda account, body: self._process(account, body, dry_run))

    def _process_delete(self, account: str, body: bytes) -> Reply:
        """Delete User Profile: ``{"identity": ...}`` or ``{"guid": ...}`` (a value or a list of at most
        100), never both; recorded as deleted when it is one."""
        state = self.server.state
        problem, kind, values = check_delete(body)
        if problem:
            return 400, {"status": "fail", "error": problem, "code": 400}, {}
        with state.lock:
            state.deleted[account].extend((kind, v) for v in values)
            state.counters["profiles_deleted"] += len(values)
        return 200, {"status": "success", "processed": len(values)}, {}

    def _serve(self, process: Callable[[str, bytes], Reply]) -> None:
        """Any of the account's endpoints: its credentials (401), its concurrency (429), then, after its
        latency and injected faults, what ``process`` answers (uploads and deletes alike)."""
        state = self.server.state
        body = self._body()
        account = self.headers.get("X-CleverTap-Account-Id", "")
        passcode = self.headers.get("X-CleverTap-Passcode", "")
        if account not in state.accounts or state.accounts[account] != passcode:
            return self._send(401, {"status": "fail", "error": "Invalid Credentials", "code": 401})
        with state.lock:
            state.requests_by_account[account] += 1
        if not state.enter(account):
            return self._send(429, {"status": "fail", "error": "Too many concurrent requests", "code": 429})
        try:
            reply = self._answer(account, body, process)
        finally:
            # The request leaves the in-flight count *before* its answer is written: a client that has read
            # the answer may start its next request at once, and must not find its own old one still counted.
            state.leave(account)
        if reply is None:
            return self._cut()
        return self._send(*reply)

    def _answer(self, account: str, body: bytes, process: Callable[[str, bytes], Reply]) -> Reply:
        """The answer, given after the account's latency in all: the work of checking and storing the
        records is part of that time, as it is at a real API, not added to it (15 uploads of 1,000 records
        checked one after the other under the GIL would otherwise add about 50 ms to each round)."""
        state = self.server.state
        faults = state.faults.for_account(account)
        latency_s = 0.0
        if faults.latency_ms or faults.jitter_ms:
            latency_s = (faults.latency_ms + state.rng.uniform(0, faults.jitter_ms)) / 1000
        self.answer_at = time.time() + latency_s - (time.monotonic() - self.started)  # for the record file
        reply = self._injected(account, faults) or process(account, body)
        if latency_s:
            time.sleep(max(0.0, latency_s - (time.monotonic() - self.started)))
        return reply

    def _injected(self, account: str, faults: Faults) -> Reply:
        """An injected fault's answer (an outage, a 429, a 5xx), or None: the request goes on."""
        state = self.server.state
        if state.in_outage():
            state.counters["outage"] += 1
            return 503, {"status": "fail", "error": "Service Unavailable", "code": 503}, {}
        if state.roll(faults.throttle_rate):
            state.counters["throttled"] += 1
            with state.lock:
                state.throttled_by_account[account] += 1
            headers = {"Retry-After": f"{faults.retry_after:g}"} if faults.retry_after is not None else {}
            return 429, {"status": "fail", "error": "Too Many Requests", "code": 429}, headers
        if state.roll(faults.error_rate):
            state.counters["errors"] += 1
            code = 500 if state.roll(0.5) else 503
            return code, {"status": "fail", "error": "Server Error", "code": code}, {}
        return None

    def _process(self, account: str, body: bytes, dry_run: bool) -> Reply:
        state = self.server.state
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        records = payload.get("d") if isinstance(payload, dict) else None
        if not isinstance(records, list):
            return 400, {"status": "fail", "error": "Malformed request", "code": 400}, {}
        if len(records) > C.MAX_BATCH_SIZE:
            error = f"Malformed request: at most {C.MAX_BATCH_SIZE} records"
            return 400, {"status": "fail", "error": error, "code": 400}, {}
        tokens = sum(1 for r in records if isinstance(r, dict) and r.get("type") == "token")
        if tokens > C.MAX_TOKEN_BATCH:  # what the real API answers past 100 is not documented
            error = f"Malformed request: at most {C.MAX_TOKEN_BATCH} token records a request"
            return 400, {"status": "fail", "error": error, "code": 400}, {}
        if tokens:
            state.count_tokens(tokens, mixed=tokens < len(records))
        accepted: list[Any] = []
        unprocessed: list[dict[str, Any]] = []
        faults = state.faults.for_account(account)
        for n, rec in enumerate(records, start=1):
            problem = check_record(rec, faults)
            if problem is None:
                accepted.append(rec)
            else:
                code, error = problem
                unprocessed.append(
                    {
                        "status": "fail",
                        "code": code,
                        "error": f"{error}. Skipped record number : {n}",
                        "record": rec,
                    }
                )
        if not dry_run:
            stored: bytes | list[bytes] = body if not unprocessed else [orjson.dumps(r) for r in accepted]
            state.store(account, stored, len(accepted), len(unprocessed), self.answer_at)
        if accepted and state.roll(faults.cut_rate):
            state.counters["cut"] += 1
            return None  # stored, and the client never hears
        status = "success" if not unprocessed else ("partial" if accepted else "fail")
        return 200, {"status": status, "processed": len(accepted), "unprocessed": unprocessed}, {}

    def _cut(self) -> None:
        with self.server.state.lock:
            self.server.state.by_status["cut"] += 1
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _split(stored: bytes | list[bytes]) -> list[bytes]:
    if isinstance(stored, bytes):
        return [orjson.dumps(rec) for rec in orjson.loads(stored)["d"]]
    return stored


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: EmulatorState) -> None:
        super().__init__(address, Handler)
        self.state = state


@dataclass
class Emulator:
    """An emulator running in a background thread: ``with Emulator(...) as emu: emu.url``."""

    accounts: dict[str, str] = field(default_factory=lambda: dict([DEMO_ACCOUNT]))
    faults: Faults = field(default_factory=Faults)
    host: str = "127.0.0.1"
    port: int = 0
    seed: int | None = None
    record_file: IO[str] | None = None

    def __post_init__(self) -> None:
        self.state = EmulatorState(self.accounts, self.faults, self.seed, self.record_file)
        self.server = EmulatorServer((self.host, self.port), self.state)
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self.server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_account(text: str) -> tuple[str, str]:
    account, sep, passcode = text.partition(":")
    if not sep or not account or not passcode:
        raise ValueError(f"--account must be ID:PASSCODE, got {account or text!r}:...")
    return account, passcode
