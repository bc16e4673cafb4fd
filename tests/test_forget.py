"""Forgetting a user: the pure rules (request splitting, the policy on each answer, what names a user), and
the purge and the delete against a real Redis and the emulator over HTTP, in process. The run with real
worker and beat processes (and one SIGKILLed mid-forget) is in tests/test_forget_e2e.py."""

from __future__ import annotations

import base64
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from pipeline import constants as C
from pipeline.cli.forgetting import read_values
from pipeline.config import load_settings
from pipeline.delivery import Deliverer
from pipeline.errors import InputError
from pipeline.forget import (
    Forgetter,
    State,
    Verdict,
    Who,
    anonymous_ids_beside,
    checked,
    delete_bodies,
    digest,
    entry_names,
    judge_delete,
    wanted_of,
)
from pipeline.ingest import ingest
from pipeline.local.emulator import Emulator, check_delete
from pipeline.policy import Attempt
from pipeline.store import Store
from tests.helpers import Dispatched, delivery_env, drain

ACC, PASS = "FGT-ACC", "fgt-pass"
ALICE, ALICE_ID, ALICE_ANON = "alice@example.com", "u-alice", "anon-alice-7"
BOB, BOB_ID, BOB_ANON = "bob@example.com", "u-bob", "anon-bob-3"

# ------------------------------------------------------------------------------------------ the rules


def test_delete_requests_split_at_100_and_never_mix_identity_and_guid() -> None:
    who = Who(
        identities=tuple(f"p{i}@x.com" for i in range(180)),
        user_ids=tuple(f"u{i}" for i in range(70)),
        object_ids=tuple(f"g{i}" for i in range(101)),
    )
    bodies = delete_bodies(who)
    # userIds go both ways: an integration sends one as the identity, or as the objectId without an email
    assert [(k, len(v)) for k, v in bodies] == [
        ("identity", 100), ("identity", 100), ("identity", 50), ("guid", 100), ("guid", 71),
    ]  # fmt: skip
    for kind in ("identity", "guid"):
        sent = [v for k, values in bodies if k == kind for v in values]
        assert len(sent) == len(set(sent))  # each value once a kind
    for kind, values in bodies:  # the emulator takes each, as CleverTap would
        problem, got_kind, got = check_delete(orjson.dumps({kind: values}))
        assert (problem, got_kind, got) == ("", kind, values)
    # an anonymousId is an objectId where mapping sends anonymous = "object_id"
    assert delete_bodies(Who(anonymous_ids=("a1",))) == [("guid", ["a1"])]


def test_the_emulator_refuses_what_cleartap_refuses() -> None:
    assert "either" in check_delete(b'{"identity": ["a"], "guid": ["b"]}')[0]
    assert "either" in check_delete(b"{}")[0]
    assert check_delete(orjson.dumps({"identity": [f"x{i}" for i in range(101)]}))[0] == "Max 100 are allowed"
    assert "not JSON" in check_delete(b"{")[0]
    assert "strings" in check_delete(b'{"guid": [1]}')[0]
    assert check_delete(b'{"guid": "one"}') == ("", "guid", ["one"])


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DONE),
        (204, Verdict.DONE),
        (201, Verdict.FAILED),  # a 2xx whose body says fail (the case below)
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (None, Verdict.RETRY),
        (401, Verdict.HOLD),
        (403, Verdict.HOLD),
        (400, Verdict.FAILED),
        (404, Verdict.FAILED),
    ],
)
def test_the_policy_on_each_answer(status: int | None, verdict: Verdict) -> None:
    refused = b'{"status": "fail", "error": "Max 100 are allowed", "code": 400}'
    body = refused if status in (400, 201) else b""
    got, reason = judge_delete(Attempt(status, body, error="ConnectionError" if status is None else None))
    assert got is verdict
    if status in (400, 201):
        assert "Max 100 are allowed" in reason


def test_a_record_is_theirs_by_its_identifying_fields_in_any_letter_case(store: Store) -> None:
    records = [
        {"identity": "Ann@X.com", "type": "event", "evtName": "a", "evtData": {}},  # theirs, other case
        {"identity": "joann@x.com", "type": "event", "evtName": "b", "evtData": {}},  # someone else
        {"identity": "bob@x.com", "type": "event", "evtName": "c", "evtData": {"size": "42", "n": 42}},
        {"objectId": "42", "type": "event", "evtName": "d", "evtData": {}},  # user 42, as the objectId
        {"identity": 42, "type": "profile", "profileData": {"Name": "n"}},  # user 42, a number
        {"identity": "bob@x.com", "type": "profile", "profileData": {"Email": "ANN@x.com"}},  # her email
        {
            "identity": "b2@x.com",
            "type": "event",
            "evtName": "e",
            "evtData": {"note": '"identity":"ann@x.com"'},
        },
        {"type": "event", "identity": "b3@x.com", "evtName": "f", "evtData": {"identity": "42"}},  # nested
        {
            "type": "event",
            "identity": "b4@x.com",
            "evtName": "g",
            "evtData": {"Email": "ann@x.com"},
        },  # nested
    ]
    key = store.key("default", "pending")
    store.r.rpush(key, *[orjson.dumps(r) for r in records])
    _, end, removed = store.forget_pending_step("default", 0, 100, wanted_of(["ann@x.com", "42"]))
    assert end
    assert sorted(orjson.loads(r).get("evtName", "profile") for r in removed) == [
        "a",
        "d",
        "profile",
        "profile",
    ]
    left = [orjson.loads(r).get("evtName") for r in store.r.lrange(key, 0, -1) if r]
    assert left == ["b", "c", "e", "f", "g"]
    assert digest(" Ann@X.com ") == digest("ann@x.com")
    assert digest("User-1") != digest("user-1")  # ids keep their case


def test_a_shared_anonymous_id_leads_to_nobody_else() -> None:
    norms = {ALICE, ALICE_ID}
    hers = {"userId": ALICE_ID, "anonymousId": "family-pc", "context": {"traits": {"email": ALICE}}}
    his = {"userId": BOB_ID, "anonymousId": "family-pc", "context": {"traits": {"email": BOB}}}
    assert entry_names({"stage": "mapping", "event": hers}, norms)
    assert not entry_names({"stage": "mapping", "event": his}, norms)  # his dead letter stays
    assert anonymous_ids_beside(hers, norms) == ["family-pc"]  # her anonymous hold goes
    assert anonymous_ids_beside(his, norms) == []
    # a record that merely mentions her (someone's referral property) is not hers
    assert not entry_names(
        {"stage": "api", "record": {"identity": BOB, "evtData": {"referred": ALICE}}}, norms
    )


def test_bad_requests_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="name at least one user"):
        checked(Who())
    with pytest.raises(InputError, match="identity 2 is empty"):
        checked(Who(identities=("a@x.com", "  ")))
    with pytest.raises(InputError, match="longer than"):
        checked(Who(user_ids=("u" * 2000,)))
    f = tmp_path / "who.txt"
    f.write_text("# people\nalice@example.com\nuser_id: u-1\n\nobject_id:g-1\nfoo: bar\n")
    with pytest.raises(InputError, match=r"line 6: unknown kind before ':'"):
        read_values(str(f))
    f.write_text("alice@example.com\nuser_id: u-1\nobject_id:g-1\nanonymous_id: a-1\n")
    assert read_values(str(f)) == Who(("alice@example.com",), ("u-1",), ("g-1",), ("a-1",))


# ------------------------------------------------------------------------- real Redis and the emulator


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(accounts={ACC: PASS}) as emu:
        yield emu


def _who_events(email: str, uid: str, anon: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    """An identify and ``n`` tracks of one user (messageIds as an SDK makes them: nothing of the user's)."""
    tag = zlib.crc32(uid.encode())
    out: list[dict[str, Any]] = [
        {"type": "identify", "userId": uid, "anonymousId": anon, "messageId": f"m{tag}-id-{start}",
         "traits": {"email": email, "name": uid}},
    ]  # fmt: skip
    out += [
        {"type": "track", "event": "Product Viewed", "userId": uid, "anonymousId": anon,
         "messageId": f"m{tag}-{start + i}", "properties": {"i": start + i}}
        for i in range(n)
    ]  # fmt: skip
    return out


def _bad_event(uid: str, anon: str, email: str) -> dict[str, Any]:
    """An event that cannot be mapped (a mapping dead letter holding the whole event)."""
    return {"type": "track", "userId": uid, "anonymousId": anon, "context": {"traits": {"email": email}},
            "messageId": f"bad-{zlib.crc32(uid.encode())}"}  # fmt: skip


def dead_lettered_events() -> list[dict[str, Any]]:
    """For each user, an event CleverTap refuses (the emulator restricts "Refused Event": an api dead letter,
    and the debugger's copy of the answer, which echoes the record) and one that cannot be mapped (a
    mapping dead letter, holding the whole event)."""
    refused = [
        {"type": "track", "event": "Refused Event", "userId": uid,
         "messageId": f"r-{zlib.crc32(uid.encode())}", "context": {"traits": {"email": email}}}
        for uid, email in ((ALICE_ID, ALICE), (BOB_ID, BOB))
    ]  # fmt: skip
    return [*refused, _bad_event(ALICE_ID, ALICE_ANON, ALICE), _bad_event(BOB_ID, BOB_ANON, BOB)]


def all_text(client: Any, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every key's contents as one blob each (Celery's messages with their base64 bodies decoded)."""
    out: dict[str, bytes] = {}
    for key in client.scan_iter(count=1000):
        name = key.decode()
        if any(s in name for s in skip):
            continue
        kind = client.type(key).decode()
        parts: list[bytes]
        if kind == "string":
            parts = [client.get(key) or b""]
        elif kind == "list":
            parts = list(client.lrange(key, 0, -1))
        elif kind == "hash":
            parts = [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == "zset":
            parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            parts = list(client.smembers(key))
        else:
            parts = []
        blob = b"\n".join(parts)
        for part in parts:  # kombu's messages: {"body": base64, ...}
            try:
                message = orjson.loads(part)
                if isinstance(message, list):
                    message = message[0]
                if isinstance(message, dict) and isinstance(message.get("body"), str):
                    blob += b"\n" + base64.b64decode(message["body"])
            except (orjson.JSONDecodeError, ValueError, TypeError, IndexError):
                pass
        out[name] = blob
    return out


def holders(client: Any, values: list[str], skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, blob in all_text(client, skip).items():
        named = [v for v in values if v.encode() in blob or v.encode() in name.encode()]
        if named:
            found[name] = named
    return found


def test_forget_removes_every_copy_then_cleartap_deletes(
    store: Store, redis_url: str, emulator: Emulator
) -> None:
    env = delivery_env(
        redis_url, emulator.url, CLEVERTAP_ACCOUNT_ID=ACC, CLEVERTAP_PASSCODE=PASS, CLEVERTAP_BATCH_SIZE="7",
        CLEVERTAP_MAX_CONCURRENCY="1", CLEVERTAP_FLUSH_INTERVAL="0.05", CLEVERTAP_DEBUGGER_SIZE="100",
    )  # fmt: skip
    settings = load_settings(env)
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    # First: some of each user's rows refused by CleverTap (api dead letters; the debugger keeps the answer,
    # which echoes the refused record), and mapping dead letters holding whole events.
    emulator.state.faults = emulator.state.faults.updated({"restricted_events": ["Refused Event"]})
    ingest(dead_lettered_events(), settings=settings, store=store)
    time.sleep(0.06)
    deliverer.assemble()
    drain(deliverer, dispatched)
    assert len([d for d in store.dead_letter_ids("default", 0, 100)]) == 4
    # Then CleverTap goes down: batches retried (open, due later) and records pending behind them.
    emulator.state.faults = emulator.state.faults.updated({"error_rate": 1.0})
    ingest(_who_events(ALICE, ALICE_ID, ALICE_ANON, 30) + _who_events(BOB, BOB_ID, BOB_ANON, 30),
           settings=settings, store=store)  # fmt: skip
    time.sleep(0.06)
    deliverer.assemble()
    for message in dispatched.take():  # one failed attempt each: retried later
        deliverer.send(message[0], message[1], message[3])
    depth = store.depth("default")
    assert depth["pending"] > 0 and depth["open_batches"] > 0, depth
    alice = [ALICE, ALICE_ID, ALICE_ANON]
    before = holders(store.r, alice)
    assert any(":pending" in k for k in before) and any(":batch:" in k for k in before)
    assert any(":dead" in k for k in before) and any(k.endswith(":ids") for k in before)
    assert any(k.endswith(":debug") for k in before)

    forgetter = Forgetter(settings, store)
    rid = forgetter.ask(Who(identities=(ALICE,)))  # her userId and anonymousId are found beside her email
    assert forgetter.run(rid, delete=False) == State.DELETING
    req = store.request(rid)
    assert req is not None
    assert req["who"]["user_ids"] == [ALICE_ID]  # from the identity map
    assert req["who"]["anonymous_ids"] == []  # a device's: never followed, nor suppressed, nor sent
    assert req["counts"]["pending"] + req["counts"]["batches"] == 31
    assert req["counts"]["dead_letters"] == 2 and req["counts"]["identity_map"] == 1
    assert req["counts"]["debugger"] >= 1
    # Nothing holds her now but the request itself (which CleverTap still needs).
    assert holders(store.r, alice, skip=("{forget}:req:",)) == {}
    assert set(holders(store.r, alice)) == {store.forget_key(f"req:{rid}")}

    # CleverTap is back: every record of Bob's arrives, none of Alice's, and the delete is sent.
    emulator.state.faults = emulator.state.faults.updated({"error_rate": 0.0})
    for _ in range(40):
        deliverer.sweep()
        deliverer.assemble()
        drain(deliverer, dispatched)
        if not any(store.depth("default")[k] for k in ("pending", "open_batches")):
            break
    stored = [orjson.loads(r) for r in emulator.state.stored_records(ACC)]
    assert not [
        r for r in stored if ALICE in orjson.dumps(r).decode() or ALICE_ID in orjson.dumps(r).decode()
    ]
    bob_views = [r for r in stored if r.get("identity") == BOB and r.get("evtName") == "Product Viewed"]
    assert len(bob_views) == 30
    assert forgetter.run(rid) == State.DONE
    assert emulator.state.deleted[ACC] == [("identity", ALICE), ("identity", ALICE_ID), ("guid", ALICE_ID)]
    req = store.request(rid)
    assert req is not None and "who" not in req and len(req["digests"]) == 2
    assert holders(store.r, alice) == {}  # the digests only, now
    # A later event for her (an SDK's retry, a replay of an old export) is filtered, counted as forgotten.
    res = ingest(
        _who_events(ALICE.upper(), ALICE_ID, "anon-new", 1, start=100), settings=settings, store=store
    )
    assert res.filtered == 2 and res.accepted == 0
    assert store.stats("default")["forgotten"] == 2
    assert holders(store.r, [ALICE, ALICE.upper()]) == {}


def test_a_batch_being_sent_is_rewritten_and_waited_for(
    store: Store, redis_url: str, emulator: Emulator
) -> None:
    env = delivery_env(redis_url, emulator.url, CLEVERTAP_ACCOUNT_ID=ACC, CLEVERTAP_PASSCODE=PASS,
                       CLEVERTAP_FLUSH_INTERVAL="0.05", CLEVERTAP_TOKEN_LEASE="4",
                       CLEVERTAP_CONNECT_TIMEOUT="1", CLEVERTAP_READ_TIMEOUT="2")  # fmt: skip
    settings = load_settings(env)
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    ingest(_who_events(ALICE, ALICE_ID, ALICE_ANON, 5) + _who_events(BOB, BOB_ID, BOB_ANON, 5),
           settings=settings, store=store)  # fmt: skip
    time.sleep(0.06)
    deliverer.assemble()
    (message,) = dispatched.take()
    # CleverTap answers slowly: the forget comes while the batch is in flight.
    emulator.state.faults = emulator.state.faults.updated({"latency_ms": 1500})
    sending = threading.Thread(target=deliverer.send, args=(message[0], message[1], message[3]))
    sending.start()
    while not store.batch_leased("default", message[1]):
        time.sleep(0.01)
    time.sleep(0.2)
    forgetter = Forgetter(settings, store)
    rid = forgetter.ask(Who(identities=(ALICE,), user_ids=(ALICE_ID,)))
    assert forgetter.run(rid, delete=False) == State.DELETING
    # it returned only once the send's answer was recorded: its lease is gone, the batch finished
    assert not store.batch_leased("default", message[1])
    sending.join()
    # The send went out before the rewrite (CleverTap has those rows: the delete goes after them).
    assert store.depth("default")["open_batches"] == 0
    assert holders(store.r, [ALICE, ALICE_ID, ALICE_ANON], skip=("{forget}:req:",)) == {}
    assert forgetter.run(rid) == State.DONE


def test_a_batch_retried_after_the_rewrite_sends_only_the_others(store: Store, redis_url: str,
                                                                 emulator: Emulator) -> None:  # fmt: skip
    env = delivery_env(redis_url, emulator.url, CLEVERTAP_ACCOUNT_ID=ACC, CLEVERTAP_PASSCODE=PASS,
                       CLEVERTAP_FLUSH_INTERVAL="0.05")  # fmt: skip
    settings = load_settings(env)
    dispatched = Dispatched()
    deliverer = Deliverer(settings, store, dispatched)
    alicia = _who_events(ALICE.replace("alice", "alicia"), "u-x", "a-x", 3)
    ingest(_who_events(ALICE, ALICE_ID, ALICE_ANON, 3) + alicia, settings=settings, store=store)
    time.sleep(0.06)
    deliverer.assemble()
    forgetter = Forgetter(settings, store)
    forgetter.run(forgetter.ask(Who(identities=(ALICE,))), delete=False)
    drain(deliverer, dispatched)
    stored = emulator.state.stored_records(ACC)
    assert len(stored) == 4 and all(b"alicia@example.com" in r for r in stored)


def test_a_forgotten_users_dead_letter_is_not_replayed(store: Store, make_settings: Any) -> None:
    from pipeline.replay import replay

    settings = make_settings()
    store.r.hset(store.key("default", "dead"), "d1", orjson.dumps(
        {"id": "d1", "kind": "api:513", "stage": "api", "record": {"identity": ALICE, "type": "event",
         "evtName": "x", "evtData": {}}}))  # fmt: skip
    store.r.zadd(store.key("default", "dead:idx"), {"d1": 1})
    other = Forgetter(settings, store)
    other.ask(Who(identities=(ALICE,)))  # asked, not yet purged: the replay must not queue her record
    result = replay(store, settings.integration("default"), ids=["d1"])
    assert result.replayed_records == 0 and result.forgotten == 1
    assert store.r.llen(store.key("default", "pending")) == 0


def test_an_enqueue_with_an_old_view_of_the_list_is_refused_and_filtered_again(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings()
    store.forgotten_view("default")  # this process's view: nobody forgotten
    # another process forgets her; this one's view is now old
    other = Store.from_url(settings.redis_url)
    Forgetter(settings, other).ask(Who(identities=(ALICE,), user_ids=(ALICE_ID,)))
    assert store.forgotten_view("default")[0] == "0"  # still the old view
    res = ingest(_who_events(ALICE, ALICE_ID, ALICE_ANON, 2), settings=settings, store=store)
    assert res.accepted == 0 and res.filtered == 3
    assert store.forgotten_view("default")[0] != "0"  # refused, read again, filtered
    assert store.r.llen(store.key("default", "pending")) == 0
    other.r.close()


def test_pending_steps_are_bounded_and_follow_the_head(store: Store) -> None:
    """Small-scale check of the step bound: the pending pass moves PENDING_STEP records a call at most, and a
    tombstone is never sent (the full-size figure is `clevertap-pipeline bench-forget`)."""
    key = store.key("default", "pending")
    records = [orjson.dumps({"identity": f"p{i}@x.com", "type": "event", "evtName": "e", "evtData": {}})
               for i in range(5000)]  # fmt: skip
    store.r.rpush(key, *records)
    store.r.hset(store.key("default", "flow"), mapping={"pushed": 5000, "cut": 0})
    store.r.rpush(store.key("default", "arrivals"), "5000:0")
    position, end, removed = store.forget_pending_step(
        "default", 0, 2000, wanted_of(["p10@x.com", "p4999@x.com"])
    )
    assert (position, end, len(removed)) == (2000, False, 1)
    position, end, removed = store.forget_pending_step("default", position, 2000, wanted_of(["p4999@x.com"]))
    assert (position, end) == (4000, False)
    # a cut in between moves the head: the next step still starts where the last ended
    store.assemble("default", 1000, 0.05, 1)
    position, end, removed = store.forget_pending_step("default", position, 2000, wanted_of(["p4999@x.com"]))
    assert (position, end, len(removed)) == (5000, True, 1)
    bids = []
    while True:
        made = store.assemble("default", 1000, 0.0, 20)
        if not made:
            break
        bids += made
    sent = [r for bid in store.open_batches("default") for r in store.batch_records("default", bid)]
    assert len(sent) == 5000 - 2 and b"" not in sent
    assert C.MAX_DELETE_VALUES == 100


def test_links_are_saved_and_suppressed_before_anything_is_removed(
    store: Store, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(CLEVERTAP_FLUSH_INTERVAL="0.05")
    ingest(_who_events(ALICE, ALICE_ID, ALICE_ANON, 3), settings=settings, store=store)
    forgetter = Forgetter(settings, store)
    rid = forgetter.ask(Who(identities=(ALICE,)))

    def killed(*_: Any) -> None:
        raise RuntimeError("SIGKILL, as it were")

    monkeypatch.setattr(Forgetter, "_remove", killed)
    with pytest.raises(RuntimeError):
        forgetter.run(rid, delete=False)
    req = store.request(rid)
    assert req is not None and req["state"] == State.PURGING and req["who"]["user_ids"] == [ALICE_ID]
    assert len(store.forgotten_view("default", refresh=True)[1]) == 2  # her userId is suppressed already
    monkeypatch.undo()
    assert Forgetter(settings, store).run(rid, delete=False) == State.DELETING  # the next process finishes
    assert holders(store.r, [ALICE, ALICE_ID], skip=("{forget}:req:",)) == {}


def test_a_process_that_does_not_serve_an_integration_leaves_the_request_to_one_that_does(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings()
    rid = Forgetter(settings, store).ask(Who(identities=(ALICE,)))
    other = make_settings(CLEVERTAP_ACCOUNT_ID="OTHER-ACC")  # serves "default" too: rename it away
    from dataclasses import replace

    elsewhere = replace(other, integrations={})
    assert Forgetter(elsewhere, store).run(rid) == "unserved"
    req = store.request(rid)
    assert req is not None and req["state"] == State.PURGING and "who" in req  # nothing given up


def test_a_run_of_tombstones_keeps_an_assemble_call_short(store: Store) -> None:
    key = store.key("default", "pending")
    store.r.rpush(key, *([b""] * 50_000), orjson.dumps({"identity": "x@x.com", "type": "event"}))
    store.r.hset(store.key("default", "flow"), mapping={"pushed": 50_001, "cut": 0})
    store.r.rpush(store.key("default", "arrivals"), "50001:0")
    assert store.assemble("default", 1000, 0.0, 20) == []  # looked at 20 x 1,000 at most
    assert store.r.llen(key) == 30_001
    made = store.assemble("default", 1000, 0.0, 20) + store.assemble("default", 1000, 0.0, 20)
    assert len(made) == 1 and store.batch_records("default", made[0]) == [
        b'{"identity":"x@x.com","type":"event"}'
    ]


def test_ingest_messages_still_in_the_broker_lose_their_events(store: Store, make_settings: Any) -> None:
    from celery import Celery

    settings = make_settings()
    app = Celery(broker=settings.redis_url)  # the broker is the pipeline's Redis; no worker takes these
    theirs = _who_events(ALICE, ALICE_ID, ALICE_ANON, 2) + _who_events(BOB, BOB_ID, BOB_ANON, 2)
    app.send_task("clevertap.ingest", args=[theirs], kwargs={"integration": "default"}, queue="clevertap")
    app.send_task("clevertap.ingest", args=[theirs[3:]], queue="clevertap")  # Bob's only: left as it is
    # one taken by a worker that has not acked it yet (kombu's unacked hash: [envelope, exchange, key])
    raw = cast(bytes, store.r.lindex("clevertap", -1))  # kombu pushes on the left, a worker pops on the right
    store.r.hset("unacked", "tag-1", orjson.dumps([orjson.loads(raw), "", "clevertap"]))
    untouched = store.r.lindex("clevertap", 0)
    app.close()
    forgetter = Forgetter(settings, store)
    # her tracks carry her userId only, and nothing in Redis links it to her email yet: both are named
    rid = forgetter.run(forgetter.ask(Who(identities=(ALICE,), user_ids=(ALICE_ID,))), delete=False)
    assert rid == State.DELETING
    assert holders(store.r, [ALICE, ALICE_ID, ALICE_ANON], skip=("{forget}:req:",)) == {}
    (req_id,) = store.request_ids()
    assert (store.request(req_id) or {})["counts"]["queued_events"] == 6  # 3 of hers, in two copies
    first = orjson.loads(store.r.lindex("clevertap", -1) or b"{}")
    args, kwargs, _ = orjson.loads(base64.b64decode(first["body"]))
    # hers are placeholders: the others keep their positions (a resumed message skips what it had queued)
    assert [e.get("userId", "-") for e in args[0]] == ["-"] * 3 + [BOB_ID] * 3
    assert kwargs == {"integration": "default"} and first["headers"]["argsrepr"] == "[<6 events>]"
    assert ALICE not in first["headers"]["kwargsrepr"] + first["headers"]["argsrepr"]
    # ingested, the placeholders are filtered as forgotten; Bob's three are queued
    res = ingest(args[0], settings=settings, store=store)
    assert (res.accepted, res.filtered, res.rejected) == (3, 3, 0)
    assert store.r.lindex("clevertap", 0) == untouched
    tagged = orjson.loads(cast(bytes, store.r.hget("unacked", "tag-1")))
    assert tagged[0]["body"] == first["body"] and tagged[1:] == ["", "clevertap"]


def test_a_retried_message_keeps_placeholders_not_their_events() -> None:
    from pipeline.forget import PLACEHOLDER, scrub_suppressed

    events = _who_events(ALICE, ALICE_ID, ALICE_ANON, 1) + _who_events(BOB, BOB_ID, BOB_ANON, 1)
    digests = {digest(ALICE_ID): int(time.time() * 1000) + 60_000}
    kept = scrub_suppressed(events, digests)
    assert kept[:2] == [PLACEHOLDER, PLACEHOLDER] and kept[2:] == events[2:]
    assert scrub_suppressed(events, {}) is events


def test_ids_keep_their_case_and_a_user_forgotten_again_moves_the_generation(store: Store) -> None:
    assert '"bob123"' not in wanted_of(["Bob123"]) and '"ann@x.com"' in wanted_of(["Ann@X.com"])
    gen = store.suppress("default", [digest("a@x.com")], store.now_ms() + 60_000)
    assert store.suppress("default", [digest("a@x.com")], store.now_ms() + 90_000) == gen  # nothing new
    store.suppress("default", [digest("b@x.com")], store.now_ms() - 1)  # its time has passed, still listed
    gen = int(store.forgotten_view("default", refresh=True)[0])
    assert store.suppress("default", [digest("b@x.com")], store.now_ms() + 60_000) > gen  # forgotten again


def test_message_ids_with_their_email_go_in_the_forms_upstream_makes_them(
    store: Store, make_settings: Any
) -> None:
    key = store.key("default", "seen")
    kept = ["val@x.com-1", "al@x.com.au-2", "uuid-1"]
    gone = ["al@x.com", "al@x.com_1700000000", "al@x.com-17", "signup-al@x.com", "x_al@x.com", "a:AL@x.com:3"]
    store.r.zadd(key, {m: 1 for m in kept + gone})
    forgetter = Forgetter(make_settings(), store)
    forgetter.run(forgetter.ask(Who(identities=("al@x.com",))), delete=False)
    assert sorted(cast(bytes, m).decode() for m in store.r.zrange(key, 0, -1)) == sorted(kept)
