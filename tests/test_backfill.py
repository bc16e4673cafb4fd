"""The backfill lane with real Redis and the emulator: an import's rows arrive as exact records, never more
than the window in Redis, once each across a resumed run, refused rows kept as dead letters that name them,
and the lane cuts nothing while live traffic has a batch due or needs the slots."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.backfill import CANCELLED, DONE, READ, PushOutcome
from pipeline.delivery import BACKFILL_AHEAD, BACKFILL_STEM, Deliverer
from pipeline.importer import Importer, ImportFailed, Progress, Source, begin
from pipeline.imports import CsvSpec
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator
from pipeline.metrics import RedisCollector
from pipeline.replay import replay
from pipeline.status import integration_status
from pipeline.store import Store
from tests.helpers import (
    ACC,
    PASS,
    Dispatched,
    dead_letters,
    drain,
    emulator_records,
    emulator_settings,
    run_message,
)

ORDERS_SCHEMA = {
    "amount": "Float",
    "qty": "Integer",
    "paid_on": "Date",
    "gift": "Boolean",
    "order_id": "String",
}


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(accounts={ACC: PASS}) as emu:
        yield emu


def _orders(n: int, start: int = 0, bad_every: int = 0) -> bytes:
    lines = ["email,ts,order_id,amount,qty,paid_on,gift"]
    for i in range(start, start + n):
        amount = "lots" if bad_every and i % bad_every == bad_every - 1 else f"{i % 50}.5"
        day = f"2025-01-0{i % 9 + 1}T00:00:00Z"
        gift = "true" if i % 2 else "false"
        lines.append(f"u{i}@x.com,{1_700_000_000 + i},O-{i},{amount},{i % 3 + 1},{day},{gift}")
    return ("\n".join(lines) + "\n").encode()


def _run(
    store: Store, settings: Any, data: bytes, spec: CsvSpec, path: str, **kw: Any
) -> tuple[str, Progress]:
    config = settings.integration("default")
    path_obj = path
    with open(path_obj, "wb") as f:
        f.write(data)
    iid, _, start = begin(store, config, path, {"format": "csv", "type": spec.kind, "event": spec.event})
    with open(path, "rb") as stream:
        importer = Importer(store, config, iid, kw.pop("window", settings.import_window), **kw)
        return iid, importer.run(Source(stream, "csv", config, store, spec), start)


def test_csv_orders_arrive_as_exact_charged_records(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url, CLEVERTAP_FLUSH_INTERVAL="0.05")
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    spec = CsvSpec("event", "Charged", {"order_id": "Charged ID", "amount": "Amount"}, ORDERS_SCHEMA)
    iid, progress = _run(store, settings, _orders(2500, bad_every=1000), spec, str(tmp_path / "orders.csv"))
    assert progress.rows == 2500 and progress.queued == 2498 and progress.refused == 2
    assert [str(e) for e in progress.errors] == [
        "line 1001, column 'amount': 'lots' is not a Float",
        "line 2001, column 'amount': 'lots' is not a Float",
    ], progress.errors
    assert store.import_info("default", iid).state == READ  # type: ignore[union-attr]
    shown = integration_status(settings, store, "default")
    assert shown["imports"][0]["queued"] == 2498 and shown["backfill_waiting"] == 2498
    registry = CollectorRegistry()
    registry.register(RedisCollector(settings, store))
    exposition = generate_latest(registry).decode()
    assert 'clevertap_import_records{integration="default",what="queued"} 2498.0' in exposition
    assert 'clevertap_backfill_records{integration="default"} 2498.0' in exposition
    deliverer.assemble()
    drain(deliverer, dispatched, rounds=100)
    got = {
        r["objectId"] if "objectId" in r else r["identity"]: r for r in emulator_records(emulator.url, ACC)
    }
    assert len(got) == 2498
    one = got["u7@x.com"]
    assert one == {
        "type": "event", "identity": "u7@x.com", "ts": 1_700_000_007, "evtName": "Charged",
        "evtData": {"Charged ID": "O-7", "Amount": 7.5, "qty": 2, "paid_on": "$D_1736294400", "gift": True},
    }, one  # fmt: skip
    info = store.import_info("default", iid)
    assert info is not None and info.state == DONE and info.number("delivered") == 2498
    # the refused rows: mapping dead letters holding the row and its line, never replayed as events
    letters = [d for d in dead_letters(store) if d.get("import") == iid]
    assert sorted(d["line"] for d in letters) == [1001, 2001]
    assert letters[0]["row"]["amount"] == "lots" and letters[0]["reasons"][0].startswith("amount:")
    res = replay(store, settings.integration("default"))
    assert sorted(res.unreplayable) == sorted(d["id"] for d in letters)


def test_profile_csv_with_a_multi_value_column(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url)
    deliverer, dispatched = None, Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    data = b'identity,Name,tags,zip\nc-1,Ann,"a,b",01234\nc-2,Bob,,99\n'
    spec = CsvSpec("profile", None, {}, {"tags": "String[]"})
    _run(store, settings, data, spec, str(tmp_path / "people.csv"))
    deliverer.assemble()
    drain(deliverer, dispatched)
    got = {r["identity"]: r for r in emulator_records(emulator.url, ACC)}
    assert got["c-1"]["profileData"] == {"Name": "Ann", "tags": {"$add": ["a", "b"]}, "zip": "01234"}
    assert got["c-2"]["profileData"]["zip"] == 99 and got["c-2"]["type"] == "profile"


def test_the_window_bounds_what_redis_holds(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url, CLEVERTAP_BATCH_SIZE="100")
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    config = settings.integration("default")
    peak = [0]
    waits = [0]

    def held_now() -> int:  # records of the import anywhere in Redis: its lane and every batch
        lanes = sum(int(store.r.llen(k)) for k in store.r.scan_iter(match="*:import:*:records"))
        bodies = [cast(bytes, store.r.get(k) or b"") for k in store.r.scan_iter(match="*:batch:*")]
        return lanes + sum(len(b.split(b"\n")) for b in bodies if b)

    def deliver_some(_: float) -> None:  # the window is full: a worker delivers meanwhile
        waits[0] += 1
        peak[0] = max(peak[0], held_now())
        deliverer.assemble()
        drain(deliverer, dispatched, rounds=3)

    path = tmp_path / "big.csv"
    path.write_bytes(_orders(6000))
    spec = CsvSpec("event", "Charged")
    iid, _, _ = begin(store, config, str(path), {"format": "csv", "type": "event", "event": "Charged"})
    with open(path, "rb") as stream:
        Importer(store, config, iid, 1000, chunk=250, sleep=deliver_some).run(
            Source(stream, "csv", config, store, spec),
            0,
            lambda p: peak.__setitem__(0, max(peak[0], held_now())),
        )
    deliverer.assemble()
    drain(deliverer, dispatched, rounds=200)
    assert waits[0] > 0 and 0 < peak[0] <= 1000, (waits, peak)
    assert len({r["identity"] for r in emulator_records(emulator.url, ACC)}) == 6000


def test_a_run_stopped_midway_resumes_and_queues_every_row_once(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url)
    config = settings.integration("default")
    path = tmp_path / "orders.csv"
    path.write_bytes(_orders(3500))
    shape = {"format": "csv", "type": "event", "event": "Charged"}
    spec = CsvSpec("event", "Charged")
    iid, state, start = begin(store, config, str(path), shape)

    class Stop(Exception):
        pass

    def stop_after_two(p: Progress) -> None:
        if p.rows >= 2000:
            raise Stop

    with open(path, "rb") as stream, pytest.raises(Stop):
        Importer(store, config, iid, 100_000).run(
            Source(stream, "csv", config, store, spec), start, stop_after_two
        )
    again, state, start = begin(store, config, str(path), shape)
    assert (again, state, start) == (iid, "running", 2000)
    # a second importer that read from an older checkpoint is refused, writes nothing
    outcome, at = store.push_import("default", iid, (1000, 1500), [b"{}"], [], {}, 100_000, "0")
    assert (outcome, at) == (PushOutcome.MOVED, 2000)
    with open(path, "rb") as stream:
        Importer(store, config, iid, 100_000).run(Source(stream, "csv", config, store, spec), start)
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    deliverer.assemble()
    drain(deliverer, dispatched, rounds=100)
    ids = [r["identity"] for r in emulator_records(emulator.url, ACC)]
    assert len(ids) == 3500 and len(set(ids)) == 3500
    # a finished import run again queues nothing
    assert begin(store, config, str(path), shape)[1] == DONE


def test_the_lane_waits_while_live_traffic_is_due_or_needs_the_slots(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(
        redis_url, emulator.url, CLEVERTAP_BATCH_SIZE="10", CLEVERTAP_MAX_CONCURRENCY="4",
        CLEVERTAP_FLUSH_INTERVAL="30",
    )  # fmt: skip
    config = settings.integration("default")
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    _run(store, settings, _orders(200), CsvSpec("event", "Charged"), str(tmp_path / "o.csv"))
    # a full live batch waiting: nothing from the lane
    live = [
        {"type": "track", "event": "Live", "userId": f"l{i}", "context": {"traits": {"email": f"l{i}@x.com"}}}
        for i in range(10)
    ]
    ingest(live, settings=settings, store=store)
    assert deliverer.fill_backfill(config) == 0
    deliverer.assemble()  # the live batch is cut; the lane: 4 slots - 1 reserved - 1 live, + 2 waiting ahead
    made = [bid for _, bid, _, _ in dispatched.take()]
    assert len([b for b in made if not b.startswith(BACKFILL_STEM)]) == 1
    assert len([b for b in made if b.startswith(BACKFILL_STEM)]) == 2 + BACKFILL_AHEAD
    assert deliverer.fill_backfill(config) == 0  # no room until one of them ends
    # a partial live batch not yet due (flush 30 s) does not hold the lane back: a lane batch's send ends
    # and the lane's next is cut at once (no tick), the live record left waiting
    ingest(
        [{**live[0], "userId": "z", "context": {"traits": {"email": "z@x.com"}}}],
        settings=settings,
        store=store,
    )
    report = run_message(deliverer, ("default", next(b for b in made if b.startswith(BACKFILL_STEM)), 0.0, 1))
    assert report.result.value == "delivered"
    again = [bid for _, bid, _, _ in dispatched.take()]
    assert len(again) == 1 and again[0].startswith(BACKFILL_STEM)
    assert store.depth("default")["pending"] == 1


def test_cancel_removes_what_the_import_queued(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url, CLEVERTAP_BATCH_SIZE="100")
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    iid, _ = _run(store, settings, _orders(1000), CsvSpec("event", "Charged"), str(tmp_path / "o.csv"))
    deliverer.fill_backfill(settings.integration("default"))
    assert store.cancel_import("default", iid) == (1000, 10, 0)
    assert store.import_info("default", iid).state == CANCELLED  # type: ignore[union-attr]
    assert not list(store.r.scan_iter(match="*:batch:*")) and not list(store.r.scan_iter(match="*:records"))
    drain(deliverer, dispatched)
    assert emulator_records(emulator.url, ACC) == []
    with pytest.raises(ImportFailed, match="cancelled"):
        config = settings.integration("default")
        store.r.hset(store.key("default", f"import:{iid}"), "state", CANCELLED)
        Importer(store, config, iid, 1000).run(Source(io.BytesIO(_orders(5)), "csv", config, store,
                                                      CsvSpec("event", "Charged")), 0)  # fmt: skip


def test_ready_records_and_events_go_through_the_lane(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url)
    config = settings.integration("default")
    records = [{"type": "event", "identity": f"r{i}", "ts": 1_700_000_000 + i, "evtName": "Old Order",
                "evtData": {"n": i}} for i in range(5)]  # fmt: skip
    text = b"\n".join(orjson.dumps(r) for r in records) + b"\nnot json\n" + b'{"type": "event"}\n'
    events = [{"type": "track", "event": "Viewed", "userId": f"e{i}", "messageId": f"m{i}",
               "timestamp": "2024-05-01T00:00:00Z", "context": {"traits": {"email": f"e{i}@x.com"}}}
              for i in range(3)]  # fmt: skip
    for fmt, data in (("records", text), ("events", b"\n".join(orjson.dumps(e) for e in events))):
        path = tmp_path / f"{fmt}.jsonl"
        path.write_bytes(data)
        iid, _, start = begin(store, config, str(path), {"format": fmt})
        with open(path, "rb") as stream:
            progress = Importer(store, config, iid, 100_000).run(Source(stream, fmt, config, store), start)
        if fmt == "records":
            assert progress.queued == 5 and progress.refused == 2
            assert [e.line for e in progress.errors][:1] == [6]
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    deliverer.assemble()
    drain(deliverer, dispatched)
    got = emulator_records(emulator.url, ACC)
    assert sorted(r["identity"] for r in got if r["evtName"] == "Old Order") == [f"r{i}" for i in range(5)]
    viewed = [r for r in got if r["evtName"] == "Viewed"]
    assert len(viewed) == 3 and viewed[0]["ts"] == 1714521600


def test_a_window_no_bigger_than_a_batch_still_drains(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    """A refused row leaves the lane a record short of a batch: the lane cuts it partial, or the importer
    would wait for room for ever."""
    settings = emulator_settings(redis_url, emulator.url, CLEVERTAP_BATCH_SIZE="1000")
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    config = settings.integration("default")
    waits = [0]

    def deliver_some(_: float) -> None:
        waits[0] += 1
        assert waits[0] < 50, store.import_info("default", iid)
        deliverer.assemble()
        drain(deliverer, dispatched, rounds=3)

    path = tmp_path / "o.csv"
    path.write_bytes(_orders(3000, bad_every=1000))
    iid, _, _ = begin(store, config, str(path), {"format": "csv", "type": "event", "event": "Charged"})
    with open(path, "rb") as stream:
        Importer(store, config, iid, 1000, sleep=deliver_some).run(
            Source(stream, "csv", config, store, CsvSpec("event", "Charged", {}, {"amount": "Float"})), 0
        )
    deliverer.assemble()
    drain(deliverer, dispatched, rounds=50)
    assert waits[0] > 0 and len(emulator_records(emulator.url, ACC)) == 2997


def test_the_lane_never_takes_the_slot_kept_for_live_even_when_throttled(store: Store) -> None:
    store.r.hset(store.account_key("ACC-T", "limit"), "effective", 2)  # another client shares the account
    assert store.acquire_token("ACC-T", 15, 10, "lane-1", reserve=1)[0]
    assert not store.acquire_token("ACC-T", 15, 10, "lane-2", reserve=1)[0]
    assert store.acquire_token("ACC-T", 15, 10, "live-1")[0]
    # throttled down to one request at a time: no slot to keep beside it, the lane shares the one there is
    store.r.hset(store.account_key("ACC-U", "limit"), "effective", 1.7)
    assert store.acquire_token("ACC-U", 15, 10, "lane-3", reserve=1)[0]


def test_a_cancelled_import_run_again_keeps_its_counts_apart(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    settings = emulator_settings(redis_url, emulator.url, CLEVERTAP_BATCH_SIZE="100")
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    iid, _ = _run(store, settings, _orders(300), CsvSpec("event", "Charged"), str(tmp_path / "o.csv"))
    deliverer.fill_backfill(settings.integration("default"))
    first = next(bid for _, bid, _, _ in dispatched)
    store.r.set(store.key("default", f"lease:{first}"), "someone-sending")  # one batch is being sent
    assert store.cancel_import("default", iid) == (200, 2, 1)
    store.r.delete(store.key("default", f"lease:{first}"))
    iid2, progress = _run(store, settings, _orders(300), CsvSpec("event", "Charged"), str(tmp_path / "o.csv"))
    assert iid2 == iid and progress.queued == 300
    drain(deliverer, dispatched)  # the old run's batch: dropped, not sent, not counted in the new run
    info = store.import_info("default", iid)
    assert info is not None and info.number("settled") == 0 and info.number("queued") == 300
    assert emulator_records(emulator.url, ACC) == []
    deliverer.assemble()
    drain(deliverer, dispatched)
    ids = [r["identity"] for r in emulator_records(emulator.url, ACC)]
    assert len(ids) == 300 == len(set(ids))
    assert store.import_info("default", iid).state == DONE  # type: ignore[union-attr]


def test_forget_reaches_the_lanes_and_the_rows_an_import_refused(
    redis_url: str, store: Store, emulator: Emulator, tmp_path: Any
) -> None:
    from pipeline.forget import Forgetter, Who

    settings = emulator_settings(redis_url, emulator.url)
    iid, _ = _run(
        store,
        settings,
        _orders(20, bad_every=10),
        CsvSpec("event", "Charged", {}, {"amount": "Float"}),
        str(tmp_path / "o.csv"),
    )
    assert any(d["row"]["email"] == "u9@x.com" for d in dead_letters(store))  # line 11: refused
    forgetter = Forgetter(settings, store)
    rid = forgetter.ask(Who(identities=("u3@x.com", "u9@x.com")))
    forgetter.run(rid)
    lane = store.r.lrange(store.key("default", f"import:{iid}:records"), 0, -1)
    assert (
        len(lane) == 18 and sum(1 for r in lane if r == b"") == 1 and not any(b"u3@x.com" in r for r in lane)
    )
    assert not any(d.get("row", {}).get("email") == "u9@x.com" for d in dead_letters(store))
    Deliverer(settings, store, (dispatched := Dispatched())).assemble()
    drain(Deliverer(settings, store, dispatched), dispatched)
    got = [r["identity"] for r in emulator_records(emulator.url, ACC)]
    assert len(got) == 17 and "u3@x.com" not in got
    assert store.import_info("default", iid).state == DONE  # type: ignore[union-attr]
