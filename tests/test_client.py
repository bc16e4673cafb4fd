"""The HTTP client: one attempt, the spec's headers, environment proxies read once."""

from __future__ import annotations

import threading

import pytest
import responses

from pipeline.client import UploadClient, _cut, join_records
from pipeline.config import load_settings
from tests.helpers import PASSCODE, environment


def test_proxies_come_from_the_environment_and_honour_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "in1.api.clevertap.com")
    client = UploadClient(1, 1)
    assert (
        client.proxies_for("https://eu1.api.clevertap.com/1/upload")["https"] == "http://proxy.internal:3128"
    )
    assert "https" not in client.proxies_for("https://in1.api.clevertap.com/1/upload")


def test_a_custom_ca_bundle_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem")
    assert UploadClient(1, 1).session.verify == "/etc/ssl/corp.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert UploadClient(1, 1).session.verify is True


@responses.activate
def test_one_attempt_sends_the_body_unchanged_with_the_specs_headers() -> None:
    integ = load_settings(environment(CLEVERTAP_REGION="sg1")).integration("default")
    responses.post("https://sg1.api.clevertap.com/1/upload", json={"status": "success"})
    body = join_records([b'{"a":1}', b'{"b":2}'])
    attempt = UploadClient(1, 1).upload(integ, body)
    assert attempt.status == 200 and attempt.error is None
    sent = responses.calls[0].request
    assert sent.body == b'{"d":[{"a":1},{"b":2}]}'
    assert sent.headers["X-CleverTap-Account-Id"] == "TEST-ACC-1"
    assert sent.headers["X-CleverTap-Passcode"] == PASSCODE
    assert sent.headers["Content-Type"] == "application/json; charset=utf-8"


@responses.activate
def test_network_errors_become_an_attempt_without_status_and_without_details() -> None:
    import requests

    integ = load_settings(environment()).integration("default")
    responses.post(integ.upload_url, body=requests.ConnectTimeout("connect timed out to host"))
    attempt = UploadClient(1, 1).upload(integ, b'{"d":[]}')
    assert attempt.status is None and attempt.error == "ConnectTimeout"


@responses.activate
@pytest.mark.parametrize(
    ("error", "cut"), [("ReadTimeout", True), ("ConnectTimeout", False), ("ConnectionError", False)]
)
def test_only_a_request_that_was_sent_and_then_timed_out_counts_as_cut(error: str, cut: bool) -> None:
    # cut: CleverTap may still be working on it, so its token is kept (pipeline.delivery)
    import requests

    integ = load_settings(environment()).integration("default")
    responses.post(integ.upload_url, body=getattr(requests, error)("timed out"))
    attempt = UploadClient(1, 1).upload(integ, b'{"d":[]}')
    assert attempt.status is None and attempt.error == error and attempt.cut is cut


def test_a_deadline_before_any_socket_shuts_nothing_and_is_not_a_cut() -> None:
    box: dict[str, object] = {"lock": threading.Lock()}  # still resolving or connecting: no conn yet
    _cut(box)
    box["done"] = True
    timer = box["timer"]
    assert isinstance(timer, threading.Timer)
    timer.cancel()
    assert box.get("fired") and not box.get("shut")
