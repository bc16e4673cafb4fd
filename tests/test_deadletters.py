"""Dead letters can be seen, fixed and replayed; nothing is lost on the way."""

from __future__ import annotations

import time
from typing import Any

import orjson
import requests

from pipeline.config import load_settings
from pipeline.deadletters import iter_dead_letters, replay, summarise
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator, Faults
from pipeline.store import Store, dead_letter
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
        # The account's restriction is lifted (or the preset changed); replay the refused rows.
        requests.post(emu.url + "/_emulator/faults", json={"restricted_events": []}, timeout=5)
        result = replay(store, settings.integration("default"), stage="api")
        assert result.replayed_records == 3 and store.dead_letter_count("default") == 0
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
    result = replay(store, lenient.integration("default"), stage="mapping")
    assert (result.remapped_events, result.rejected_again) == (1, 1)
    (left,) = list(iter_dead_letters(store, "default"))
    assert left["event"]["messageId"] == "n2" and "missing identity" in left["reasons"][0]
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


def test_listing_pages_through_every_dead_letter_and_filters_by_stage_and_code() -> None:
    # Plain Redis reads (ZRANGE, HMGET): a fast unit test on fakeredis; the scripts that write dead letters
    # are tested against the real Redis above.
    import fakeredis

    store = Store(fakeredis.FakeRedis())
    for n in range(1234):  # more than two pages
        did, body = dead_letter(
            "default", "api", code=513 if n % 3 else 522, error=f"row {n}", record={"n": n}
        )
        store.r.hset(store.key("default", "dead"), did, body)
        store.r.zadd(store.key("default", "dead:idx"), {did: n})
    store.r.hset(
        store.key("default", "dead"),
        "m1",
        orjson.dumps({"id": "m1", "stage": "mapping", "reasons": ["x: y"]}),
    )
    store.r.zadd(store.key("default", "dead:idx"), {"m1": 5000})
    everything = list(iter_dead_letters(store, "default"))
    assert len(everything) == 1235 and [e["record"]["n"] for e in everything[:1234]] == list(range(1234))
    assert len(list(iter_dead_letters(store, "default", "api", 522))) == 412
    assert [e["id"] for e in iter_dead_letters(store, "default", "mapping")] == ["m1"]
    summary = summarise(store, "default")
    assert {k: v["count"] for k, v in summary.items()} == {"api:513": 822, "api:522": 412, "mapping:x": 1}


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
        store.r.hset(store.key("default", "dead"), did, body)
        store.r.zadd(store.key("default", "dead:idx"), {did: at})
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
