"""``clevertap-pipeline bench-forget``: how long forgetting one user takes with a large backlog queued for
others, and the longest single Redis call it makes (Redis's SLOWLOG, threshold 0: every command's own run
time on the server), while an ingest keeps queueing for others. An embedded Redis of its own."""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import orjson

from pipeline.config import load_settings
from pipeline.forget import Forgetter, Who
from pipeline.ingest import ingest
from pipeline.local.redis_server import EmbeddedRedis
from pipeline.store import Store, new_id

TARGET, TARGET_ID = "forget.me@example.com", "u-forget-me"


def _record(i: int, email: str) -> bytes:
    return orjson.dumps(
        {"identity": email, "ts": 1764547200 + i % 86400, "type": "event", "evtName": "Product Viewed",
         "evtData": {"sku": f"SKU-{i % 5000}", "price": 19.99, "i": i}},
    )  # fmt: skip


def _fill(store: Store, records: int, theirs: int, batches: int, letters: int) -> None:
    """``records`` pending (``theirs`` of them the target's, spread evenly), ``batches`` open batches of
    1,000 (one with the target's), ``letters`` dead letters and as many identity-map entries."""
    pending = store.key("default", "pending")
    every = max(1, records // max(1, theirs))
    pipe = store.r.pipeline(transaction=False)
    for start in range(0, records, 10_000):
        chunk = [_record(i, TARGET if i % every == every // 2 else f"p{i}@x.com")
                 for i in range(start, min(records, start + 10_000))]  # fmt: skip
        pipe.rpush(pending, *chunk)
        if len(pipe) >= 20:
            pipe.execute()
    pipe.execute()
    store.r.hset(store.key("default", "flow"), mapping={"pushed": records, "cut": 0})
    store.r.rpush(store.key("default", "arrivals"), f"{records}:{store.now_ms()}")
    now = store.now_ms()
    for b in range(batches):
        bid = f"bench-{b}"
        body = b"\n".join(
            _record(i, TARGET if (b == 0 and i % 100 == 0) else f"b{i}@x.com") for i in range(1000)
        )
        store.r.set(store.key("default", f"batch:{bid}"), body)
        store.r.hset(store.key("default", f"meta:{bid}"), mapping={"created": now, "size": 1000, "gen": 1})
        store.r.zadd(store.key("default", "open"), {bid: now + 3_600_000})
    for start in range(0, letters, 5000):
        pipe = store.r.pipeline(transaction=False)
        for i in range(start, min(letters, start + 5000)):
            did = new_id()
            email = TARGET if i % 1000 == 0 else f"d{i}@x.com"
            entry = {"id": did, "kind": "api:513", "stage": "api", "record": orjson.loads(_record(i, email))}
            pipe.hset(store.key("default", "dead"), did, orjson.dumps(entry))
            pipe.zadd(store.key("default", "dead:idx"), {did: now})
            pipe.hset(
                store.key("default", "ids"), f"uid-{i}" if i else TARGET_ID, f"d{i}@x.com" if i else TARGET
            )
        pipe.execute()


def bench_forget(args: argparse.Namespace) -> int:
    with EmbeddedRedis() as server:
        env = {"REDIS_URL": server.url, "CLEVERTAP_ACCOUNT_ID": "BENCH", "CLEVERTAP_PASSCODE": "bench-pass",
               "CLEVERTAP_REGION": "eu1", "CLEVERTAP_FLUSH_INTERVAL": "3600"}  # fmt: skip
        settings = load_settings(env)
        store = Store.from_url(server.url)
        started = time.perf_counter()
        _fill(store, args.records, args.theirs, args.batches, args.letters)
        memory = int(store.r.info("memory")["used_memory"])
        print(f"queued for others: {args.records:,} pending records, {args.batches} open batches of 1,000, "
              f"{args.letters:,} dead letters and identity-map entries ({memory / 2**20:,.0f} MiB of Redis; "
              f"filled in {time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip
        store.r.config_set("slowlog-max-len", 1_000_000)
        store.r.config_set("slowlog-log-slower-than", 0)
        store.r.slowlog_reset()
        stop = threading.Event()
        live: list[float] = []

        def trickle() -> None:  # an ingest of others' events all along: how long does each wait?
            n = 0
            while not stop.is_set():
                events = [
                    {"type": "track", "event": "Live", "userId": f"live{n + i}", "messageId": f"l{n + i}"}
                    for i in range(50)
                ]
                t = time.perf_counter()
                ingest(events, settings=settings, store=live_store)
                live.append(time.perf_counter() - t)
                n += 50
                time.sleep(0.01)

        live_store = Store.from_url(server.url)
        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(0.5)
        forgetter = Forgetter(settings, store)
        t = time.perf_counter()
        rid = forgetter.ask(Who(identities=(TARGET,)))
        forgetter.run(rid, delete=False)
        took = time.perf_counter() - t
        stop.set()
        thread.join()
        slow: list[Any] = store.r.slowlog_get(1_000_000)
        store.r.config_set("slowlog-log-slower-than", 10_000)
        req = store.request(rid) or {}
        longest = max(slow, key=lambda e: e["duration"]) if slow else None
        scripts = sorted(e["duration"] for e in slow if b"EVALSHA" in (e["command"] or b"").upper())
        by_script: dict[str, int] = {}
        for e in slow:
            words = (e["command"] or b"").decode("utf-8", "replace").split()
            if len(words) > 1 and words[0].upper() == "EVALSHA":
                name = {s.sha: n for n, s in store._scripts.items()}.get(words[1], words[1][:8])
                by_script[name] = max(by_script.get(name, 0), int(e["duration"]))
        print(f"forgot one user in {took:.2f} s: removed {req.get('counts')}")
        names = {script.sha: name for name, script in store._scripts.items()}
        if longest is not None:
            words = (longest["command"] or b"").decode("utf-8", "replace").split()
            command = " ".join(names.get(w, w) for w in words[:3])[:80]
            print(f"longest single Redis call during it: {longest['duration'] / 1000:.1f} ms ({command}); "
                  f"{len(slow):,} calls logged")  # fmt: skip
        if scripts:
            print(f"script calls: {len(scripts):,}, median {statistics.median(scripts) / 1000:.2f} ms, "
                  f"p99 {scripts[int(len(scripts) * 0.99)] / 1000:.2f} ms")  # fmt: skip
        if by_script:
            print(
                "longest call of each script: "
                + ", ".join(
                    f"{n} {d / 1000:.1f} ms" for n, d in sorted(by_script.items(), key=lambda x: -x[1])
                )
            )
        if live:
            live.sort()
            median = statistics.median(live) * 1000
            print(f"a live ingest of 50 events meanwhile: {len(live)} calls, median {median:.1f} ms, "
                  f"longest {live[-1] * 1000:.1f} ms")  # fmt: skip
        store.r.close()
        live_store.r.close()
    return 0
