"""The command line, run as a real process."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.cli import verbs
from pipeline.local.sample import SPEC_PAYLOAD, SPEC_PURCHASE
from tests.helpers import PASSCODE, ROOT, environment, run_cli

LINES = (
    b"\n".join(
        [
            orjson.dumps(SPEC_PURCHASE),
            b"{not json",
            b"",
            orjson.dumps(
                {
                    "type": "track",
                    "event": "X",
                    "context": {"consent": {"categories": ["marketing"]}},
                }
            ),
            orjson.dumps({**SPEC_PURCHASE}),  # same messageId: a duplicate
            orjson.dumps({"type": "page", "userId": "u1", "context": {"consent": {"categories": []}}}),
        ]
    )
    + b"\n"
)


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return environment(redis_url, process=True, CLEVERTAP_CONSENT_CATEGORIES="marketing")


def test_ingest_reports_every_bad_line_by_number_and_ends_with_a_json_summary(env: dict[str, str]) -> None:
    out = run_cli("ingest", "--json", "-", env=env, input=LINES)
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout.splitlines()[-1]) == {
        "accepted": 1,
        "filtered": 1,
        "duplicate": 1,
        "rejected": 2,
        "fields_dropped": 0,
        "held": 0,
    }
    errors = out.stderr.decode().splitlines()
    assert errors[0].startswith("line 2: rejected: not JSON")
    assert errors[1].startswith("line 4: rejected: missing identity")
    assert PASSCODE not in out.stdout.decode() + out.stderr.decode()


def test_ingest_strict_exits_1_on_rejections_and_reads_files_and_json_arrays(
    env: dict[str, str], tmp_path: Any
) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(orjson.dumps([SPEC_PURCHASE, {"type": "nope"}]))
    out = run_cli("ingest", "--strict", "--json", str(path), env=env)
    assert out.returncode == 1
    assert orjson.loads(out.stdout.splitlines()[-1])["rejected"] == 1
    assert b"line 2: rejected: type: 'nope'" in out.stderr


def test_ingest_names_unreadable_input_and_unreachable_redis(env: dict[str, str]) -> None:
    missing = run_cli("ingest", "/no/such/file.jsonl", env=env)
    assert missing.returncode == 1 and b"cannot read /no/such/file.jsonl" in missing.stderr
    down = run_cli("ingest", "-", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, input=LINES)
    assert down.returncode == 3 and b"Redis is not reachable" in down.stderr


def test_preview_maps_without_queueing(env: dict[str, str], store: Any) -> None:
    out = run_cli("preview", "-", env=env, input=LINES)
    assert out.returncode == 0, out.stderr
    lines = [orjson.loads(x) for x in out.stdout.splitlines()]
    assert [(x["line"], x["outcome"]) for x in lines] == [
        (1, "mapped"),
        (2, "rejected"),
        (4, "rejected"),
        (5, "duplicate"),
        (6, "filtered"),
    ]
    assert {"d": lines[0]["records"]} == SPEC_PAYLOAD
    assert "reason" not in lines[0] and lines[3]["reason"].startswith("duplicate")
    assert store.r.llen(store.key("default", "pending")) == 0


def test_preview_works_without_redis(env: dict[str, str]) -> None:
    out = run_cli("preview", "-", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, input=LINES)
    assert out.returncode == 0
    assert b"Redis is not reachable" in out.stderr
    assert orjson.loads(out.stdout.splitlines()[0])["outcome"] == "mapped"


def test_every_verb_has_help() -> None:
    registered = verbs()
    # The product's verbs, and the local tooling's, registered through its entry point.
    assert {"ingest", "status", "dead-letters replay", "emulator", "demo", "bench-deliver"} <= set(registered)
    for name in registered:
        out = run_cli(*name.split(), "--help", env=environment(None, process=True, credentials=False))
        assert out.returncode == 0 and b"usage: clevertap-pipeline " + name.encode() in out.stdout


def test_ingest_shows_a_progress_bar_on_a_terminal(env: dict[str, str], tmp_path: Any) -> None:
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from pipeline.local.sample import generate

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in generate(2000)))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a terminal 160 wide
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "ingest", "--json", str(path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"ingest: 100%" in shown and b"accepted" in shown  # tqdm's bar, with the counts
    assert orjson.loads(proc.stdout.splitlines()[-1])["accepted"] > 1800
