"""The Redis calls of the backfill lane (see :mod:`pipeline.imports`): an import's records wait in a list of
their own, ``P:{I}:import:<id>:records``, beside its checkpoint and counts in ``P:{I}:import:<id>``;
batches are cut from the lanes only while live traffic needs nothing (``assemble_backfill.lua``), and
every batch's end settles what it held (``lib/settle.lua``). The :class:`~pipeline.store.Store` has
these; they live here so that store.py stays the live delivery side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


#: An import's states: reading its file, read (delivering the rest), done, cancelled.
RUNNING, READ, DONE, CANCELLED = "running", "read", "done", "cancelled"
ACTIVE = (RUNNING, READ)


class PushOutcome:
    """What :meth:`BackfillCalls.push_import` found (``import_push.lua``)."""

    QUEUED, ALREADY, FULL, STALE, STOPPED, MOVED = 1, 0, -1, -2, -3, -4


@dataclass(frozen=True)
class ImportInfo:
    """One import as ``import status`` shows it: its hash's fields, typed."""

    id: str
    integration: str
    fields: dict[str, str]

    def number(self, name: str) -> int:
        try:
            return int(self.fields.get(name) or 0)
        except ValueError:
            return 0

    @property
    def state(self) -> str:
        return self.fields.get("state", "")

    @property
    def in_redis(self) -> int:
        """Records of the import in Redis now (queued, not yet delivered or dead-lettered)."""
        return 0 if self.state == CANCELLED else max(0, self.number("queued") - self.number("settled"))

    def as_dict(self) -> dict[str, Any]:
        f = self.fields
        out: dict[str, Any] = {"id": self.id, "integration": self.integration, "state": self.state}
        for name in ("file", "format", "kind"):
            out[name] = f.get(name, "")
        for name in ("rows", "queued", "delivered", "dead", "refused", "filtered", "old", "removed",
                     "started", "updated", "finished", "read_at"):  # fmt: skip
            out[name] = self.number(name)
        out["in_redis"] = self.in_redis
        return out


class BackfillCalls:
    """Mixed into Store: these need its client ``r``, ``_run``, ``key`` and ``base``."""

    r: redis.Redis

    if TYPE_CHECKING:  # what Store and KeyLayout provide (declared only: never shadowing theirs)

        def _run(self, script: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any: ...

        def key(self, integration: str, name: str) -> str: ...

        def keys(self, integration: str, *names: str) -> list[str]: ...

        def base(self, integration: str) -> str: ...

        def mark_ready(self, integration: str) -> None: ...

    def begin_import(self, integration: str, import_id: str, fields: dict[str, str]) -> tuple[str, int]:
        """Start the import ``import_id`` (``fields`` describe its file), or find it started: (state, rows
        already read). A cancelled one starts again from row 0."""
        keys = self.keys(integration, f"import:{import_id}", "imports", "imports:all")
        res = cast(list[Any], self._run("import_begin", keys, [import_id, orjson.dumps(fields)]))
        return _s(res[0]), int(res[1])

    def push_import(
        self,
        integration: str,
        import_id: str,
        rows: tuple[int, int],
        records: Sequence[bytes],
        letters: Sequence[tuple[str, bytes]],
        counters: dict[str, int],
        window: int,
        forgotten_gen: str,
        position: int | None = None,
    ) -> tuple[int, int]:
        """Queue a chunk (rows ``rows[0]`` up to ``rows[1]`` of the file) with its checkpoint in one step:
        (PushOutcome, records in the window, or the rows another importer is at)."""
        keys = self.keys(
            integration, f"import:{import_id}", "stats", "dead", "dead:idx", "dead:kinds", "forgotten:gen"
        )
        args = [
            rows[0],
            rows[1],
            b"\n".join(records),
            len(records),
            orjson.dumps([[did, body.decode()] for did, body in letters]),
            orjson.dumps({k: v for k, v in counters.items() if v}),
            window,
            forgotten_gen,
            "" if position is None else position,
        ]
        res = cast(list[Any], self._run("import_push", keys, args))
        outcome = int(res[0])
        if outcome == PushOutcome.QUEUED and records:
            self.mark_ready(integration)
        if outcome == PushOutcome.STOPPED:
            self.__dict__["_stopped_state"] = _s(res[1])
            return outcome, 0
        return outcome, int(res[1]) if len(res) > 1 else 0

    def lane_batch_stopped(self, integration: str, bid: str) -> bool:
        """Whether a lane's batch belongs to an import cancelled (or started again) since it was cut: it is
        dropped, not sent."""
        import_id, run = self.r.hmget(self.key(integration, f"meta:{bid}"), "import", "run")
        if import_id is None:
            return False
        state, current = self.r.hmget(self.key(integration, f"import:{_s(import_id)}"), "state", "run")
        return state is None or _s(state) == CANCELLED or _s(current or b"") != _s(run or b"1")

    def end_import(self, integration: str, import_id: str, rows: int) -> str:
        """The file is read to its end at ``rows``: the state after ('read', or 'done' already)."""
        keys = self.keys(integration, f"import:{import_id}", "imports")
        state = _s(self._run("import_end", keys, [import_id, rows]))
        self.mark_ready(integration)
        return state

    def cancel_import(self, integration: str, import_id: str) -> tuple[int, int, int] | None:
        """Stop an import and remove what it had queued: (records removed, batches removed, batches left
        sending), or None when it is not running."""
        keys = self.keys(
            integration, f"import:{import_id}", "imports", "open", "held", "import:open", "stats"
        )
        res = cast(list[Any], self._run("import_cancel", keys, [import_id, self.base(integration)]))
        if int(res[0]) < 0:
            return None
        return int(res[0]), int(res[1]), int(res[2])

    def assemble_backfill(
        self,
        integration: str,
        batch_size: int,
        flush_s: float,
        stem: str,
        slots: int,
        reserve: int,
        max_batches: int,
    ) -> list[str]:
        """Cut batches from the integration's backfill lanes, within the slots live traffic leaves."""
        keys = self.keys(
            integration, "pending", "arrivals", "flow", "open", "auth", "stats", "imports", "import:open"
        )
        args = [batch_size, int(flush_s * 1000), self.base(integration), stem, slots, reserve, max_batches]
        return [_s(b) for b in cast(list[bytes], self._run("assemble_backfill", keys, args))]

    def active_imports(self, integration: str) -> list[str]:
        """Ids of the integration's imports still reading or delivering, oldest first."""
        return [_s(x) for x in cast(list[bytes], self.r.zrange(self.key(integration, "imports"), 0, -1))]

    def imports(self, integration: str) -> list[ImportInfo]:
        """Every import the integration keeps (the last 100), newest first."""
        newest_first = self.r.zrevrange(self.key(integration, "imports:all"), 0, -1)
        ids = [_s(x) for x in cast(list[bytes], newest_first)]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for iid in ids:
            pipe.hgetall(self.key(integration, f"import:{iid}"))
        out = []
        for iid, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(ImportInfo(iid, integration, {_s(k): _s(v) for k, v in raw.items()}))
        return out

    def import_info(self, integration: str, import_id: str) -> ImportInfo | None:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.key(integration, f"import:{import_id}")))
        return ImportInfo(import_id, integration, {_s(k): _s(v) for k, v in raw.items()}) if raw else None

    def backfill_waiting(self, integration: str) -> int:
        """Records waiting in the integration's lanes (not yet cut)."""
        ids = self.active_imports(integration)
        if not ids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for iid in ids:
            pipe.llen(self.key(integration, f"import:{iid}:records"))
        return sum(int(n) for n in pipe.execute())
