"""Dead letters can be seen, fixed and replayed; nothing is lost on the way."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import requests

from pipeline.config import load_settings
from pipeline.deadletters import Filter, count, dead_letter, iter_dead_letters, iter_pages, summarise
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator, Faults
from pipeline.replay import replay
from pipeline.store import Store, kind_of
from tests.helpers import (
    ACC,
    PASS,
    deliver_through,
    drain,
    emulator_records,
    environment,
    events,
    page_events,
    run_cli,
)


def stored(emu: Emulator) -> list[dict[str, Any]]:
    return emulator_records(emu.url)


def test_rows_clevertap_refused_deliver_when_replayed_after_the_cause_is_fixed(
    redis_url: str, store: Store
) -> None:
    with Emulator({ACC: PASS}, Faults(restricted_events=frozenset({"webpageviewed"}))) as emu:
        delivery = deliver_through(emu.url, redis_url, store, events(2) + page_events(3))
        settings, d, dispatched = delivery.settings, delivery.deliverer, delivery.dispatched
        assert summarise(store, "default")["api:513"]["count"] == 3
        assert store.dead_letter_kinds("default") == {"api:513": 3}  # counted by the finish script
        # The account's restriction is lifted (or the preset changed); replay the refused rows.
        requests.post(emu.url + "/_emulator/faults", json={"restricted_events": []}, timeout=5)
        result = replay(store, settings.integration("default"), where=Filter("default", "api"))
        assert result.replayed_records == 3 and store.dead_letter_count("default") == 0
        assert store.dead_letter_kinds("default") == {}  # and uncounted by the replay script
        time.sleep(0.06)
        d.assemble()
        drain(d, dispatched)
        assert sorted(r["evtName"] for r in stored(emu)) == ["Product Viewed"] * 2 + ["Web Page Viewed"] * 3
    assert store.stats("default")["replayed"] == 3


def test_mapping_dead_letters_replay_through_the_current_mappings(redis_url: str, store: Store) -> None:
    strict = load_settings(environment(redis_url, CLEVERTAP_NESTED="reject"))
    nested = {
        "type": "track",
        "event": "X",
        "userId": "u1",
        "messageId": "n1",
        "properties": {"dims": {"w": 1}},
    }
    hopeless = {"type": "track", "event": "X", "messageId": "n2"}  # no identity, whatever the config
    assert ingest([nested, hopeless], settings=strict, store=store).rejected == 2
    lenient = load_settings(environment(redis_url, CLEVERTAP_NESTED="stringify"))
    result = replay(store, lenient.integration("default"), where=Filter("default", "mapping"))
    assert (result.remapped_events, result.rejected_again) == (1, 1)
    (left,) = list(iter_dead_letters(store, Filter("default")))
    assert left["event"]["messageId"] == "n2" and "missing identity" in left["reasons"][0]
    assert store.dead_letter_kinds("default") == {"mapping:missing identity": 1}
    # Replaying it again while another replay has taken it adds and counts nothing twice.
    before = store.stats("default")["rejected_mapping"]
    again = replay(store, lenient.integration("default"), ids=[left["id"], left["id"]])
    assert again.rejected_again + again.already_replayed == 2 and store.dead_letter_count("default") == 1
    assert store.stats("default")["rejected_mapping"] == before + 1
    (queued,) = [orjson.loads(r) for r in store.r.lrange(store.key("default", "pending"), 0, -1)]
    assert queued["evtData"] == {"dims": '{"w":1}'}


def test_replaying_an_unknown_id_reports_it(redis_url: str, store: Store) -> None:
    settings = load_settings(environment(redis_url))
    assert replay(store, settings.integration("default"), ids=["nope"]).missing == ["nope"]


def test_cli_lists_replays_drops_and_shows_status(redis_url: str, store: Store) -> None:
    env = environment(redis_url, process=True)
    settings = load_settings(environment(redis_url))
    ingest(
        [{"type": "track", "event": "X", "messageId": f"bad{i}"} for i in range(3)],
        settings=settings,
        store=store,
    )
    listed = run_cli("dead-letters", "list", "--limit", "2", env=env)
    assert listed.returncode == 0
    entries = [orjson.loads(x) for x in listed.stdout.splitlines()]
    assert len(entries) == 2 and entries[0]["stage"] == "mapping"
    status = run_cli("status", "--json", env=env)
    body: dict[str, Any] = orjson.loads(status.stdout)["integrations"]["default"]
    assert (
        body["queues"]["dead_letters"] == 3 and body["dead_letters"]["mapping:missing identity"]["count"] == 3
    )
    text = run_cli("status", env=env)
    assert b"dead letters mapping:missing identity: 3" in text.stdout
    assert run_cli("dead-letters", "replay", env=env).returncode == 1  # neither --id nor --all
    dropped = run_cli("dead-letters", "drop", "--id", entries[0]["id"], env=env)
    assert orjson.loads(dropped.stdout) == {"dropped": 1}
    replayed = run_cli("dead-letters", "replay", "--all", env=env)
    assert orjson.loads(replayed.stdout)["rejected_again"] == 2
    assert store.dead_letter_count("default") == 2


def test_refused_rows_can_be_replayed_under_a_renamed_event(redis_url: str, store: Store) -> None:
    with Emulator({ACC: PASS}, Faults(restricted_events=frozenset({"webpageviewed"}))) as emu:
        delivery = deliver_through(emu.url, redis_url, store, page_events(2))
        env, d, dispatched = delivery.env, delivery.deliverer, delivery.dispatched
        assert store.dead_letter_count("default") == 2
        out = run_cli(
            "dead-letters",
            "replay",
            "--all",
            "--code",
            "513",
            "--rename-event",
            "Web Page Viewed=Page Viewed",
            env=environment(None, process=True, credentials=False, **env),
        )
        assert orjson.loads(out.stdout)["replayed_records"] == 2
        time.sleep(0.06)
        d.assemble()
        drain(d, dispatched)
        assert [r["evtName"] for r in stored(emu)] == ["Page Viewed", "Page Viewed"]
    assert store.dead_letter_count("default") == 0
    bad = run_cli(
        "dead-letters",
        "replay",
        "--all",
        "--rename-event",
        "nope",
        env=environment(None, process=True, credentials=False, **env),
    )
    assert bad.returncode == 1 and b"OLD=NEW" in bad.stderr


def _store_raw(store: Store, entries: list[tuple[str, bytes, int]], count_kinds: bool = True) -> None:
    """Dead letters written as the scripts do (entry, index, kind count), at the given ms."""
    pipe = store.r.pipeline()
    for did, body, ms in entries:
        pipe.hset(store.key("default", "dead"), did, body)
        pipe.zadd(store.key("default", "dead:idx"), {did: ms})
        kind = kind_of(body)
        if count_kinds and kind:
            pipe.hincrby(store.key("default", "dead:kinds"), kind, 1)
    pipe.execute()


def test_listing_pages_through_every_dead_letter_behind_a_cursor(store: Store) -> None:
    # Many letters share a millisecond (a batch's refused rows are stored in one step): pages split them.
    letters = []
    for n in range(1234):
        did, body = dead_letter(
            "default", "api", code=513 if n % 3 else 522, error=f"row {n}", record={"n": n}
        )
        letters.append((did, body, n // 700))
    _store_raw(store, letters)
    m1 = orjson.dumps({"id": "m1", "kind": "mapping:x", "stage": "mapping", "reasons": ["x: y"]})
    _store_raw(store, [("m1", m1, 5000)])
    everything = list(iter_dead_letters(store, Filter("default")))
    assert len(everything) == 1235
    assert sorted(e["record"]["n"] for e in everything[:1234]) == list(range(1234))
    assert len(list(iter_dead_letters(store, Filter("default", "api", 522)))) == 412
    assert [e["id"] for e in iter_dead_letters(store, Filter("default", "mapping"))] == ["m1"]
    assert [e["id"] for e in iter_dead_letters(store, Filter("default", since=4.0, until=6.0))] == ["m1"]
    # Removing what was read (a purge, a replay) neither skips nor repeats one.
    seen = []
    for page in iter_pages(store, Filter("default", stage="api", code=513)):
        seen += [e["id"] for e in page]
        assert store.drop_dead_letters("default", [e["id"] for e in page]) == len(page)
    assert len(seen) == len(set(seen)) == 822
    assert len(list(iter_dead_letters(store, Filter("default")))) == 413
    assert store.dead_letter_kinds("default") == {"api:522": 412, "mapping:x": 1}


def test_summaries_come_from_the_kind_counts_and_read_one_page() -> None:
    # Plain Redis reads (HGETALL, HLEN, ZREVRANGE, HMGET): a fast unit test on fakeredis; the scripts
    # that keep the kind counts are tested against the real Redis.
    import fakeredis

    store = Store(fakeredis.FakeRedis())
    letters = []
    for n in range(1234):
        did, body = dead_letter("default", "api", code=513 if n % 3 else 522, error=f"row {n}")
        letters.append((did, body, n))
    _store_raw(store, letters)
    old = orjson.dumps({"id": "old", "stage": "mapping", "reasons": ["x: y"]})  # stored before kinds
    _store_raw(store, [("old", old, 5000)], count_kinds=False)
    summary = summarise(store, "default")
    assert {k: v["count"] for k, v in summary.items()} == {"api:513": 822, "api:522": 412, "unknown": 1}
    assert summary["api:513"]["example"] == "row 1232" and summary["api:522"]["example"] == "row 1233"
    assert count(store, Filter("default")) == {"api:513": 822, "api:522": 412, "unknown": 1}


def test_cli_shows_counts_exports_dry_runs_and_purges_with_time_filters(
    redis_url: str, store: Store, tmp_path: Any
) -> None:
    env = environment(redis_url, process=True)
    for n in range(6):  # three an hour ago, three now: two api rows of code 513 and one mapping each time
        at = int(time.time() * 1000) - (3_600_000 if n < 3 else 0)
        stage = "mapping" if n % 3 == 2 else "api"
        api = stage == "api"
        did, body = dead_letter(
            "default", stage, code=513 if api else None, error="x", record={"n": n} if api else None,
            reasons=["r: s"], event={"n": n},
        )  # fmt: skip
        _store_raw(store, [(did, body, at)])
    half_an_hour_ago = str(time.time() - 1800)
    counted = orjson.loads(run_cli("dead-letters", "count", env=env).stdout)
    assert counted == {"total": 6, "by_stage_and_code": {"api:513": 4, "mapping": 2}}
    recent = orjson.loads(run_cli("dead-letters", "count", "--since", half_an_hour_ago, env=env).stdout)
    assert recent["total"] == 3
    out = tmp_path / "dead.jsonl"
    exported = run_cli(
        "dead-letters", "export", "--stage", "api", "--until", half_an_hour_ago, "-o", str(out), env=env
    )
    assert exported.returncode == 0 and len(out.read_text().splitlines()) == 2
    first = orjson.loads(out.read_text().splitlines()[0])
    shown = run_cli("dead-letters", "show", first["id"], env=env)
    assert orjson.loads(shown.stdout)["id"] == first["id"]
    assert run_cli("dead-letters", "show", "no-such-id", env=env).returncode == 1
    dry = orjson.loads(run_cli("dead-letters", "replay", "--all", "--dry-run", env=env).stdout)
    assert (dry["would_replay_records"], dry["would_remap_events"]) == (4, 2) and store.dead_letter_count(
        "default"
    ) == 6
    refused = run_cli(
        "dead-letters", "purge", "--since", half_an_hour_ago, env=env
    )  # no terminal: must say --yes
    assert refused.returncode == 1 and b"--yes" in refused.stderr and store.dead_letter_count("default") == 6
    purged = run_cli("dead-letters", "purge", "--since", half_an_hour_ago, "--yes", env=env)
    assert orjson.loads(purged.stdout) == {"purged": 3} and store.dead_letter_count("default") == 3
    assert (
        run_cli("dead-letters", "count", "--since", "yesterday", env=env).returncode == 2
    )  # a clear usage error


def _peak_rss_mb(*argv: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """Run the CLI in a child of a fresh interpreter and return its result and its peak resident memory."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
        "sys.stdout.buffer.write(r.stdout); sys.stderr.buffer.write(r.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)"
    )
    cli = [sys.executable, "-m", "pipeline", *argv]
    done = subprocess.run(
        [sys.executable, "-c", probe, *cli], env=env, capture_output=True, timeout=600, check=False
    )
    *rest, peak = done.stderr.splitlines()
    done.stderr = b"\n".join(rest)
    return done, int(peak) / 1024


def test_a_million_dead_letters_stream_flat_in_memory(redis_url: str, store: Store, tmp_path: Any) -> None:
    n, chunk = 1_000_000, 20_000
    base = int(time.time() * 1000) - n
    for start in range(0, n, chunk):
        pipe = store.r.pipeline(transaction=False)
        letters = [
            dead_letter("default", "api", code=513 if i % 4 else 522, error="e", record={"i": i})
            for i in range(start, start + chunk)
        ]
        pipe.hset(store.key("default", "dead"), mapping=dict(letters))
        pipe.zadd(
            store.key("default", "dead:idx"), {did: base + start + k for k, (did, _) in enumerate(letters)}
        )
        pipe.hincrby(store.key("default", "dead:kinds"), "api:513", chunk * 3 // 4)
        pipe.hincrby(store.key("default", "dead:kinds"), "api:522", chunk // 4)
        pipe.execute()
    env = environment(redis_url, process=True)
    status, status_mb = _peak_rss_mb("status", "--json", env=env)
    body = orjson.loads(status.stdout)["integrations"]["default"]
    assert body["dead_lettered"] == n and body["dead_letters"]["api:522"]["count"] == n // 4
    out = tmp_path / "all.jsonl"
    exported, export_mb = _peak_rss_mb("dead-letters", "export", "-o", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    with out.open("rb") as f:
        assert sum(1 for _ in f) == n
    purged, purge_mb = _peak_rss_mb("dead-letters", "purge", "--code", "513", "--yes", env=env)
    assert orjson.loads(purged.stdout) == {"purged": n * 3 // 4}
    assert store.dead_letter_kinds("default") == {"api:522": n // 4}
    # Flat: the CLI alone is about 35 MB; a million entries held at once would take several hundred MB,
    # and even the 750,000 purged ids about 60 MB more.
    print(f"peak RSS: status {status_mb:.0f} MB, export {export_mb:.0f} MB, purge {purge_mb:.0f} MB")
    assert max(status_mb, export_mb, purge_mb) < 80


def test_the_cli_and_the_console_read_a_dead_letter_filter_the_same_way() -> None:
    import argparse

    from pipeline.deadletters import parse_time

    zoned = parse_time("2026-11-29T20:00:00Z")
    assert parse_time("2026-11-29T20:00") == zoned == parse_time(str(zoned))  # no zone: UTC, in both
    where, errors = Filter.from_query(
        "shop", {"stage": "api", "code": "513", "since": "2026-11-29T20:00", "until": ""}
    )
    args = argparse.Namespace(integration="shop", stage="api", code=513, since=zoned, until=None)
    assert errors == [] and where == Filter.from_args(args) == Filter("shop", "api", 513, zoned, None)
    for not_a_time in ("nan", "inf", "1e999"):
        with pytest.raises(ValueError, match="not a time"):
            parse_time(not_a_time)
    bad, errors = Filter.from_query("shop", {"stage": "x", "code": "5a", "since": "yesterday"})
    assert bad == Filter("shop") and len(errors) == 3 and "since: 'yesterday' is not a time" in errors[2]
    assert where.matches({"stage": "api", "code": 513}) and not where.matches({"stage": "api", "code": 522})
    assert not where.matches({"stage": "mapping"}) and Filter("shop").everything and not where.everything
