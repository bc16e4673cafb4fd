"""The emulator, over real HTTP: codes, record numbers, credentials, concurrency and every fault flag."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import requests

from pipeline.local.emulator import Emulator, Faults
from tests.helpers import ROOT

ACCOUNT, PASSCODE = "EMU-ACC", "emu-pass"
HEADERS = {
    "X-CleverTap-Account-Id": ACCOUNT,
    "X-CleverTap-Passcode": PASSCODE,
    "Content-Type": "application/json; charset=utf-8",
}


def event(**over: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "identity": "a@example.com",
        "ts": 1706540000,
        "evtName": "Viewed",
        "evtData": {"k": "v"},
        **over,
    }


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator({ACCOUNT: PASSCODE, "OTHER": "other-pass"}, seed=1) as server:
        yield server


def upload(
    emu: Emulator,
    records: Any,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    path: str = "/1/upload",
) -> requests.Response:
    body = raw if raw is not None else orjson.dumps({"d": records})
    return requests.post(emu.url + path, data=body, headers=headers or HEADERS, timeout=10)


def stored(emu: Emulator, account: str | None = None) -> list[dict[str, Any]]:
    url = emu.url + "/_emulator/records" + (f"?account={account}" if account else "")
    return [orjson.loads(line) for line in requests.get(url, timeout=5).content.splitlines()]


def stats(emu: Emulator) -> dict[str, Any]:
    result: dict[str, Any] = requests.get(emu.url + "/_emulator/stats", timeout=5).json()
    return result


def test_clean_upload_answers_success_and_stores_every_record(emu: Emulator) -> None:
    records = [event(), {"type": "profile", "objectId": "u1", "profileData": {"Name": "A"}}]
    resp = upload(emu, records)
    assert resp.status_code == 200
    assert resp.json() == {"status": "success", "processed": 2, "unprocessed": []}
    assert stored(emu) == records
    assert stats(emu)["records_stored"] == 2


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (event(evtName=""), 509),
        ({k: v for k, v in event().items() if k != "evtName"}, 509),
        (event(evtData={"dims": {"w": 1}}), 512),
        (event(evtData={"tags": ["a"]}), 512),
        (event(evtData={"long": "x" * 513}), 512),
        (event(evtName="App Launched"), 513),
        (event(evtName="notification viewed"), 513),
        (event(evtData={f"p{i}": i for i in range(257)}), 522),
        ({k: v for k, v in event().items() if k != "identity"}, 523),
        (event(type="other"), 524),
        ("just a string", 524),
        (event(ts=1706540000000), 525),
        (event(ts="1706540000"), 525),
    ],
)
def test_each_rejected_record_gets_clevertaps_code(emu: Emulator, record: Any, code: int) -> None:
    body = upload(emu, [record]).json()
    assert body["status"] == "fail" and body["processed"] == 0
    (entry,) = body["unprocessed"]
    assert entry["code"] == code and entry["status"] == "fail" and entry["record"] == record
    assert entry["error"].endswith("Skipped record number : 1")
    assert stored(emu) == []


def test_items_may_nest_and_512_bytes_exactly_is_fine(emu: Emulator) -> None:
    record = event(evtName="Charged", evtData={"Items": [{"sku": "A"}], "ok": "é" * 256})
    assert upload(emu, [record]).json()["status"] == "success"


def test_partial_answers_carry_one_based_record_numbers(emu: Emulator) -> None:
    records = [event(), event(evtName=""), event(), {"type": "event"}, event()]
    body = upload(emu, records).json()
    assert body["status"] == "partial" and body["processed"] == 3
    numbers = [(u["code"], u["error"].rsplit(": ", 1)[1]) for u in body["unprocessed"]]
    assert numbers == [(509, "2"), (523, "4")]
    assert len(stored(emu)) == 3


@pytest.mark.parametrize(
    "headers",
    [
        {**HEADERS, "X-CleverTap-Passcode": "wrong"},
        {**HEADERS, "X-CleverTap-Account-Id": "NOPE"},
        {"Content-Type": "application/json"},
    ],
)
def test_bad_credentials_answer_401(emu: Emulator, headers: dict[str, str]) -> None:
    resp = upload(emu, [event()], headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"status": "fail", "error": "Invalid Credentials", "code": 401}


def test_several_accounts_are_kept_apart(emu: Emulator) -> None:
    upload(emu, [event()])
    upload(
        emu,
        [event(), event()],
        headers={**HEADERS, "X-CleverTap-Account-Id": "OTHER", "X-CleverTap-Passcode": "other-pass"},
    )
    assert len(stored(emu, ACCOUNT)) == 1 and len(stored(emu, "OTHER")) == 2


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"d": {}}', b'{"x": []}', b""])
def test_malformed_bodies_answer_400(emu: Emulator, raw: bytes) -> None:
    resp = upload(emu, None, raw=raw)
    assert resp.status_code == 400 and resp.json()["error"] == "Malformed request"


def test_more_than_1000_records_answer_400(emu: Emulator) -> None:
    resp = upload(emu, [event()] * 1001)
    assert resp.status_code == 400 and "1000" in resp.json()["error"]
    assert upload(emu, [event()] * 1000).json()["processed"] == 1000


def test_dry_run_validates_without_storing(emu: Emulator) -> None:
    assert upload(emu, [event()], path="/1/upload?dryRun=1").json()["status"] == "success"
    assert stored(emu) == []


def test_more_than_the_concurrency_limit_in_flight_answers_429() -> None:
    with Emulator({ACCOUNT: PASSCODE}, Faults(latency_ms=600)) as emu:
        with ThreadPoolExecutor(20) as pool:
            codes = sorted(pool.map(lambda _: upload(emu, [event()]).status_code, range(20)))
        assert codes.count(200) == 15 and codes.count(429) == 5
        s = stats(emu)
        assert s["concurrency_429"] == 5 and s["peak_in_flight"] == {ACCOUNT: 15}


def test_injected_429_with_and_without_retry_after() -> None:
    with Emulator({ACCOUNT: PASSCODE}, Faults(throttle_rate=1.0, retry_after=2.5)) as emu:
        resp = upload(emu, [event()])
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "2.5"
        requests.post(emu.url + "/_emulator/faults", json={"retry_after": None}, timeout=5)
        resp = upload(emu, [event()])
        assert resp.status_code == 429 and "Retry-After" not in resp.headers
        assert stored(emu) == [] and stats(emu)["injected"]["throttled"] == 2


def test_injected_server_errors_store_nothing() -> None:
    with Emulator({ACCOUNT: PASSCODE}, Faults(error_rate=1.0), seed=3) as emu:
        codes = {upload(emu, [event()]).status_code for _ in range(12)}
        assert codes == {500, 503}
        assert stored(emu) == []


def test_cut_connections_store_the_records_but_never_answer() -> None:
    with Emulator({ACCOUNT: PASSCODE}, Faults(cut_rate=1.0)) as emu:
        with pytest.raises(requests.ConnectionError):
            upload(emu, [event(), event()])
        assert len(stored(emu)) == 2 and stats(emu)["injected"]["cut"] == 1


def test_outage_window_answers_503_then_recovers() -> None:
    with Emulator({ACCOUNT: PASSCODE}, Faults(outages=((0.0, 0.5),))) as emu:
        assert upload(emu, [event()]).status_code == 503
        time.sleep(0.6)
        assert upload(emu, [event()]).status_code == 200


def test_latency_delays_every_upload() -> None:
    with Emulator({ACCOUNT: PASSCODE}, Faults(latency_ms=200, jitter_ms=50)) as emu:
        started = time.monotonic()
        upload(emu, [event()])
        assert time.monotonic() - started >= 0.2


def test_fault_updates_reject_unknown_settings(emu: Emulator) -> None:
    resp = requests.post(emu.url + "/_emulator/faults", json={"nope": 1}, timeout=5)
    assert resp.status_code == 400 and "nope" in resp.json()["error"]


def test_cli_picks_a_free_port_prints_it_and_writes_the_record_file(tmp_path: Any) -> None:
    record_file = tmp_path / "records.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "emulator",
            "--port",
            "0",
            "--account",
            f"{ACCOUNT}:{PASSCODE}",
            "--record-file",
            str(record_file),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert first.startswith("emulator listening on http://127.0.0.1:")
        url = first.split(" on ")[1].strip()
        assert PASSCODE not in proc.stdout.readline().decode()
        resp = requests.post(
            url + "/1/upload", data=orjson.dumps({"d": [event()]}), headers=HEADERS, timeout=5
        )
        assert resp.json()["status"] == "success"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    line = orjson.loads(record_file.read_text().splitlines()[0])
    at = line.pop("at")  # when it was stored, in ms
    assert line == {"account": ACCOUNT, "record": event()} and abs(at / 1000 - time.time()) < 60


def test_cli_rejects_bad_flag_values() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "emulator", "--error-rate", "2"],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2 and b"must be a share between 0 and 1" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "emulator", "--account", "nopass"],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1 and b"ID:PASSCODE" in out.stderr


def test_a_request_leaves_the_in_flight_count_before_its_answer_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that has read its answer may send again at once; its old request must no longer count,
    # or a client holding exactly 15 slots would meet spurious 429s.
    from pipeline.local.emulator import Handler

    seen: list[int] = []
    original = Handler._send

    def spy(self: Handler, *args: Any, **kwargs: Any) -> None:
        seen.append(self.server.state.in_flight[ACCOUNT])
        original(self, *args, **kwargs)

    monkeypatch.setattr(Handler, "_send", spy)
    with Emulator({ACCOUNT: PASSCODE}, Faults(throttle_rate=0.5), seed=3) as emu:
        for _ in range(6):
            upload(emu, [event()])
        upload(emu, None, raw=b"not json")
    assert len(seen) == 7 and set(seen) == {0}
