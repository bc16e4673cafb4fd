"""bench-console: how fast the console's pages are with many dead letters (100,000 by default), against a
real (embedded) Redis: medians of five renders of a dead-letter page unfiltered, filtered to a code 1% of
them carry, and filtered by stage and code, and of the integrations page."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

from cryptography.fernet import Fernet
from starlette.testclient import TestClient

from pipeline.config import ENV_CONSOLE_KEY, load_settings
from pipeline.console import create_console, session_secret
from pipeline.deadletters import dead_letter
from pipeline.local.redis_server import EmbeddedRedis
from pipeline.saved import LiveSettings
from pipeline.store import Store

PASSWORD = "bench-console-password"  # noqa: S105 - a throwaway console's, in this process only


def bench_console(args: argparse.Namespace) -> int:
    os.environ[ENV_CONSOLE_KEY] = Fernet.generate_key().decode()  # this process only
    with EmbeddedRedis() as server:
        store = Store.from_url(server.url)
        base = load_settings(
            {"CLEVERTAP_ACCOUNT_ID": "A", "CLEVERTAP_PASSCODE": "p", "CLEVERTAP_REGION": "eu1",
             "REDIS_URL": server.url}
        )  # fmt: skip
        start_ms = int(time.time() * 1000) - args.letters - 60_000
        for first in range(0, args.letters, 10_000):
            letters = [
                dead_letter("default", "api", code=513 if n % 100 else 522, error="e", record={"n": n})
                for n in range(first, min(first + 10_000, args.letters))
            ]
            pipe = store.r.pipeline(transaction=False)
            pipe.hset(store.key("default", "dead"), mapping=dict(letters))
            pipe.zadd(
                store.key("default", "dead:idx"),
                {d: start_ms + first + k for k, (d, _) in enumerate(letters)},
            )
            for code in (513, 522):
                n = sum(1 for _, body in letters if f'"code":{code}'.encode() in body)
                pipe.hincrby(store.key("default", "dead:kinds"), f"api:{code}", n)
            pipe.execute()
        app = create_console(PASSWORD, session_secret(PASSWORD, "bench"), LiveSettings(lambda: base, store))
        with TestClient(app, follow_redirects=False) as client:
            token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
            assert token is not None
            client.post("/login", data={"csrf": token.group(1), "password": PASSWORD})
            print(f"{args.letters:,} dead letters (1% with code 522), a page of 50, medians of 5 renders:")
            for label, path in (
                ("dead letters, unfiltered", "/dead-letters?integration=default"),
                ("dead letters, code 522 (1%)", "/dead-letters?integration=default&code=522"),
                ("dead letters, stage api, code 513", "/dead-letters?integration=default&stage=api&code=513"),
                ("integrations", "/integrations"),
            ):
                times = []
                for _ in range(5):
                    started = time.perf_counter()
                    page = client.get(path)
                    times.append(time.perf_counter() - started)
                rows = page.text.count('name="id"')
                median_ms = statistics.median(times) * 1000
                print(f"  {label:<36} {median_ms:6.1f} ms  ({rows} rows, HTTP {page.status_code})")
    return 0
