"""The README's quickstart, as a newcomer types it: in a fresh clone, the ``sh`` blocks of its Quickstart
section run as printed (``make demo``; ``run --emulator`` in one shell; the tour in another, after sourcing
what ``run`` wrote), and what the README says they show is what they show. Then ``run`` restarts and every
endpoint stays where it was.

It installs a venv in the clone (about a minute, from pip's cache after the first time), so it is an e2e
test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.long]


def quickstart_blocks() -> list[list[str]]:
    """The command lines of each ``sh`` block in the README's Quickstart section, comments kept."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart") : text.index("## Production deployment")]
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def newcomer_env() -> dict[str, str]:
    """This machine's environment as a new shell has it: no CLEVERTAP_* or REDIS_URL, and no venv on PATH
    (the README's own lines must put it there)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEVERTAP_") and k not in ("REDIS_URL",)}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if p and p != venv_bin)
    return env


def shell(
    lines: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "\n".join(lines)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Background:
    """A block run in a shell of its own (``run`` stays in the foreground there), read until ``running;``."""

    def __init__(self, lines: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", "\n".join(lines)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stopped whole, as Ctrl-C would
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("running;"):
                return
        raise AssertionError("run did not start:\n" + "".join(self.lines))

    def stop(self) -> str:
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C in that shell
        out, _ = self.proc.communicate(timeout=90)
        return "".join(self.lines) + out


def status(cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    done = shell(["source .clevertap-pipeline/env.sh", "clevertap-pipeline status --json"], cwd, env)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = orjson.loads(done.stdout)["integrations"]["default"]
    return found


def test_the_quickstart_works_as_printed_from_a_fresh_clone(tmp_path: Path) -> None:
    blocks = quickstart_blocks()
    assert len(blocks) == 3, blocks  # make demo/test; run in one shell; the tour in another
    setup, start, tour = blocks
    clone = tmp_path / "clevertap-pipeline"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    env = newcomer_env()

    demo = shell([line for line in setup if line.startswith("make demo")], clone, env, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Every event is accounted for" in demo.stdout

    run = Background(start, clone, env)
    try:
        printed = "".join(run.lines)
        assert "source .clevertap-pipeline/env.sh" in printed and "DEMO-ACCOUNT" in printed
        first = shell(tour[:2], clone, env)  # source env.sh; ingest the tour
        assert first.returncode == 0, first.stderr
        assert "accepted 5, filtered 1, duplicate 1, rejected 3" in first.stdout, first.stdout + first.stderr
        for line in (7, 8, 10):
            assert f"line {line}: rejected" in first.stderr, first.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = status(clone, env)
            if s["delivered"] == 4 and s["counters"].get("rejected_api") == 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the tour was not delivered: {s}")
        rest = shell([tour[0], *tour[2:]], clone, env)  # the lines after ingest, now that it is delivered
        assert rest.returncode == 0, rest.stderr
        out = rest.stdout
        assert "delivered 4 records" in out and "rejected by CleverTap 1" in out  # status
        letters = [orjson.loads(x) for x in out.splitlines() if x.startswith('{"id":')]
        assert sorted(str(d.get("code") or d["stage"]) for d in letters) == [
            "522",
            "mapping",
            "mapping",
            "mapping",
        ]
        assert re.search(r"HTTP 200 .* partial", out)  # debugger --failed: the partial send
        previewed = [orjson.loads(x) for x in out.splitlines() if x.startswith('{"line":')]
        duplicates = [p["line"] for p in previewed if p["outcome"] == "duplicate"]
        assert duplicates == [1, 2, 3, 4, 5, 9] and all(
            p["records"] for p in previewed if p["line"] in duplicates
        )
        env_before = (clone / ".clevertap-pipeline" / "env.sh").read_text()
    finally:
        stopped = run.stop()
    assert "stopped" in stopped

    again = Background(start, clone, env)  # the same command, the same folder: the same endpoints
    try:
        assert (clone / ".clevertap-pipeline" / "env.sh").read_text() == env_before
        assert status(clone, env)["delivered"] == 4  # the shell sourced before still reaches it
    finally:
        again.stop()
