"""The management console's handlers against a real Redis: access, integrations saved encrypted and served
live, mappings with a preview, the debugger, and dead letters paged, replayed and purged."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from starlette.testclient import TestClient

from pipeline import saved as saved_module
from pipeline.config import ENV_CONSOLE_KEY, load_settings
from pipeline.console import create_console, session_secret
from pipeline.deadletters import dead_letter
from pipeline.saved import LiveSettings, SavedIntegrations, load_with_console
from pipeline.store import Store
from tests.helpers import PASSCODE, environment, pending

PASSWORD = "console-password-123"
KEY = Fernet.generate_key().decode()


@pytest.fixture
def live(redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch) -> LiveSettings:
    monkeypatch.setenv(ENV_CONSOLE_KEY, KEY)
    monkeypatch.setattr(saved_module, "CHECK_EVERY_S", 0.0)  # look for console changes on every call
    base = load_settings(environment(redis_url))
    return LiveSettings(lambda: base, store)


@pytest.fixture
def client(live: LiveSettings) -> Iterator[TestClient]:
    app = create_console(PASSWORD, session_secret(PASSWORD, KEY), live)
    with TestClient(app, follow_redirects=False) as c:
        yield c


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def logged_in(client: TestClient) -> str:
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"csrf": token, "password": PASSWORD})
    assert answer.status_code == 303 and answer.headers["location"] == "/integrations"
    return csrf_of(client.get("/integrations").text)


def form(region: str = "eu1", **extra: str) -> dict[str, str]:
    return {
        "name": "shop", "account_id": "SHOP-ACC", "passcode": "shop-passcode-1", "region": region,
        "preset": "default", "consent_categories": "marketing", "batch_size": "500", "max_concurrency": "15",
        **extra,
    }  # fmt: skip


def test_every_page_needs_a_login_and_carries_security_headers(client: TestClient) -> None:
    for path in (
        "/integrations",
        "/debugger",
        "/dead-letters",
        "/integrations/new",
        "/integrations/default/edit",
    ):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/login"
    page = client.get("/login")
    assert (
        page.headers["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    wrong = client.post("/login", data={"csrf": csrf_of(page.text), "password": "guess"})
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    no_csrf = client.post("/login", data={"password": PASSWORD})
    assert no_csrf.status_code == 403
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"csrf": token, "password": PASSWORD})
    cookie = next(h for k, h in answer.headers.multi_items() if k == "set-cookie")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert PASSWORD not in cookie


def test_a_form_without_its_csrf_token_is_refused(client: TestClient, live: LiveSettings) -> None:
    logged_in(client)
    answer = client.post("/integrations/new", data=form())
    assert answer.status_code == 403 and "CSRF" in answer.text
    assert live.saved.specs() == {}


def test_an_integration_is_saved_encrypted_checked_by_the_schema_and_served_live(
    client: TestClient, live: LiveSettings, store: Store
) -> None:
    token = logged_in(client)
    bad = client.post("/integrations/new", data={"csrf": token, **form(region="eu2", batch_size="5000")})
    assert bad.status_code == 400
    assert re.search(r'id="error-region">must be one of us1, in1, eu1, sg1, aps3, mec1, sk1<', bad.text)
    assert re.search(r'id="error-batch_size">must be between 1 and 1000<', bad.text)
    assert "shop-passcode-1" not in bad.text  # never sent back, not even after an error
    good = client.post("/integrations/new", data={"csrf": token, **form()})
    assert good.status_code == 303
    (spec,) = live.saved.specs().values()
    assert "shop-passcode-1" not in orjson.dumps(spec).decode() and spec["passcode_enc"]
    config = live.current().integration("shop")
    assert config.origin == "console" and config.passcode.reveal() == "shop-passcode-1"
    assert config.region == "eu1" and config.consent_categories == ("marketing",) and config.batch_size == 500
    listing = client.get("/integrations").text
    assert "shop" in listing and "SHOP-ACC" in listing and "shop-passcode-1" not in listing
    edit = client.get("/integrations/shop/edit").text
    assert 'name="passcode" value=""' in edit and "shop-passcode-1" not in edit
    # An edit with the passcode left empty keeps it.
    again = client.post(
        "/integrations/shop/edit", data={"csrf": token, **form(batch_size="250", passcode="")}
    )
    assert again.status_code == 303
    config = live.current().integration("shop")
    assert config.batch_size == 250 and config.passcode.reveal() == "shop-passcode-1"
    # The CLI sees it too, with the key in its environment.
    cli = load_with_console({**environment(store_url(store)), ENV_CONSOLE_KEY: KEY})
    assert "shop" in cli.integrations
    assert "shop" not in load_with_console(environment(store_url(store))).integrations  # no key: not served


def store_url(store: Store) -> str:
    kwargs = store.r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_integrations_from_the_environment_are_read_only(client: TestClient, live: LiveSettings) -> None:
    token = logged_in(client)
    page = client.get("/integrations/default/edit").text
    assert "read-only" in page and 'id="save"' not in page and PASSCODE not in page
    taken = client.post("/integrations/new", data={"csrf": token, **form(), "name": "default"})
    assert taken.status_code == 400 and "from the environment or the config file" in taken.text
    client.post("/integrations/default/edit", data={"csrf": token, **form()})
    assert live.saved.specs() == {} and live.current().integration("default").origin == "config"


def test_mappings_preview_what_an_edit_would_make_and_save_for_console_integrations(
    client: TestClient, live: LiveSettings
) -> None:
    token = logged_in(client)
    client.post("/integrations/new", data={"csrf": token, **form(consent_categories="")})
    event = orjson.dumps(
        {"type": "track", "event": "Order Completed", "userId": "u1", "timestamp": 1706540000,
         "properties": {"order_id": "O-1", "coupon": "SAVE10"}}
    ).decode()  # fmt: skip
    data = {
        "csrf": token, "events_text": "Video Played = Video Watched",
        "properties_text": "Order Completed: coupon = Coupon Code", "events_input": event + "\nnot json",
    }  # fmt: skip
    preview = client.post("/integrations/shop/mappings", data={**data, "action": "preview"})
    assert preview.status_code == 200
    assert "&#34;Coupon Code&#34;: &#34;SAVE10&#34;" in preview.text and "Charged" in preview.text
    assert "not JSON" in preview.text
    assert live.current().integration("shop").property_renames == {}  # a preview saves nothing
    saved = client.post("/integrations/shop/mappings", data={**data, "action": "save"})
    assert saved.status_code == 200 and "mappings-saved" in saved.text
    config = live.current().integration("shop")
    assert config.property_renames == {"Order Completed": {"coupon": "Coupon Code"}}
    assert config.event_renames == {"Video Played": "Video Watched"}
    bad = client.post(
        "/integrations/shop/mappings", data={**data, "properties_text": "nonsense", "action": "save"}
    )
    assert (
        bad.status_code == 400
        and "line 1: write Signal event: source property = CleverTap property" in bad.text
    )
    env_only = client.post("/integrations/default/mappings", data={**data, "action": "save"})
    assert env_only.status_code == 400 and "edit its mappings there" in env_only.text


def test_the_debugger_lists_attempts_and_shows_the_raw_answer_and_refused_rows(
    client: TestClient, store: Store
) -> None:
    logged_in(client)
    refused = {
        "status": "fail", "code": 513, "error": "Event name is restricted. Skipped record number : 2",
        "record": {"evtName": "X"},
    }  # fmt: skip
    body = {"status": "partial", "processed": 1, "unprocessed": [refused]}
    entry = {"time": time.time(), "batch_id": "b-1", "records": 2, "attempt": 1, "http_status": 200,
             "latency_s": 0.12, "error": None, "body": orjson.dumps(body).decode(), "body_truncated": False,
             "result": "partial", "reason": "partial"}  # fmt: skip
    store.r.lpush(store.key("default", "debug"), orjson.dumps(entry))
    listing = client.get("/debugger").text
    assert "b-1" in listing and "partial" in listing
    assert "b-1" in client.get("/debugger?integration=default&failed=1").text
    shown = client.get("/debugger/default/b-1").text
    assert "Event name is restricted" in shown and "513" in shown and "&#34;processed&#34;: 1" in shown
    assert client.get("/debugger/default/nope").status_code == 404


def test_dead_letters_page_filter_replay_and_purge(client: TestClient, store: Store) -> None:
    token = logged_in(client)
    now = int(time.time() * 1000)
    for n in range(120):
        record = {"type": "event", "identity": f"u{n}", "evtName": "E", "evtData": {}}
        did, body = dead_letter("default", "api", code=513 if n % 2 else 522, error=f"row {n}", record=record)
        store.r.hset(store.key("default", "dead"), did, body)
        store.r.zadd(store.key("default", "dead:idx"), {did: now - 10_000 + n})
    first = client.get("/dead-letters?integration=default&code=513")
    assert first.status_code == 200 and first.text.count('name="id"') == 50
    after = re.search(r'id="next" href="([^"]+)"', first.text)
    assert after is not None
    second = client.get(after.group(1).replace("&amp;", "&"))
    assert second.text.count('name="id"') == 10  # 60 with code 513: 50, then 10
    ids = re.findall(r'name="id" value="([^"]+)"', first.text)[:3]
    act = "/dead-letters/default/act?integration=default&code=513"
    replayed = client.post(act, data={"csrf": token, "action": "replay", "scope": "selected", "id": ids})
    assert replayed.status_code == 303 and "replayed+3+records" in replayed.headers["location"]
    assert len(pending(store)) == 3 and store.dead_letter_count("default") == 117
    unconfirmed = client.post(act, data={"csrf": token, "action": "purge", "scope": "matching"})
    assert "for+good" in unconfirmed.headers["location"] and store.dead_letter_count("default") == 117
    purged = client.post(act, data={"csrf": token, "action": "purge", "scope": "matching", "confirm": "yes"})
    assert "purged+57" in purged.headers["location"] and store.dead_letter_count("default") == 60
    one = re.findall(r'href="/dead-letters/default/([^"]+)"', client.get("/dead-letters").text)[0]
    assert "row " in client.get(f"/dead-letters/default/{one}").text


def test_bodies_over_the_limit_are_refused(client: TestClient) -> None:
    token = logged_in(client)
    answer = client.post("/integrations/new", data={"csrf": token, "name": "x" * 600_000})
    assert answer.status_code == 413


def test_the_console_refuses_to_start_without_a_password_or_key(redis_url: str) -> None:
    from tests.helpers import run_cli

    env = environment(redis_url, process=True)
    no_password = run_cli("console", "--port", "1", env={**env, ENV_CONSOLE_KEY: KEY})
    assert no_password.returncode == 1 and b"CLEVERTAP_CONSOLE_PASSWORD" in no_password.stderr
    outside = run_cli("console", "--host", "0.0.0.0", "--port", "1", env={**env, ENV_CONSOLE_KEY: KEY})
    assert outside.returncode == 1 and b"it listens on 0.0.0.0" in outside.stderr
    no_key = run_cli("console", "--port", "1", env={**env, "CLEVERTAP_CONSOLE_PASSWORD": PASSWORD})
    assert no_key.returncode == 1 and b"CLEVERTAP_CONSOLE_KEY" in no_key.stderr


def test_saved_integrations_need_the_key_and_keep_config_names(live: LiveSettings, store: Store) -> None:
    keyless = SavedIntegrations(store, None)
    with pytest.raises(Exception, match="CLEVERTAP_CONSOLE_KEY"):
        keyless.save("x", {"account_id": "A", "region": "eu1"}, "p")
    errors: dict[str, Any] = live.saved.check("default", {"account_id": "A", "region": "eu1"}, "p",
                                              live.current(), new=True)  # fmt: skip
    assert "environment or the config file" in errors["name"]


def test_moving_an_integration_needs_its_passcode_again(client: TestClient, live: LiveSettings) -> None:
    token = logged_in(client)
    client.post("/integrations/new", data={"csrf": token, **form()})
    moved = client.post(
        "/integrations/shop/edit",
        data={"csrf": token, **form(passcode="", api_url="http://elsewhere.example:8080")},
    )
    assert moved.status_code == 400 and re.search(
        r'id="error-passcode">enter the passcode again: api_url', moved.text
    )
    assert live.current().integration("shop").api_url is None  # nothing saved: the passcode stays put
    again = {"csrf": token, **form(api_url="http://elsewhere.example:8080")}  # with the passcode: fine
    assert client.post("/integrations/shop/edit", data=again).status_code == 303


def test_a_console_write_key_reaches_the_collector(
    client: TestClient, live: LiveSettings, store: Store
) -> None:
    from pipeline.collector.core import Collector

    token = logged_in(client)
    keyed = {"csrf": token, **form(write_key="wk-console-0123456789")}
    assert client.post("/integrations/new", data=keyed).status_code == 303
    assert "wk-console" not in orjson.dumps(live.saved.specs()).decode()  # encrypted too
    assert "wk-console" not in client.get("/integrations/shop/edit").text
    collector = Collector(live.current(), store)
    assert collector.integration_for("wk-console-0123456789") == "shop"
    taken = client.post("/integrations/new", data={**keyed, "name": "shop2"})
    assert taken.status_code == 400 and "is integration shop&#39;s write key" in taken.text


def test_an_integration_saved_with_another_key_is_shown_and_can_be_deleted(
    client: TestClient, live: LiveSettings, store: Store
) -> None:
    token = logged_in(client)
    other = SavedIntegrations(store, Fernet(Fernet.generate_key()))
    other.save("lost", {"account_id": "L", "region": "eu1"}, "lost-passcode")
    page = client.get("/integrations").text
    assert "lost" in page and "cannot be decrypted" in page
    assert "lost" not in live.current().integrations  # never served: it could not be sent
    deleted = client.post("/integrations/lost/delete", data={"csrf": token})
    assert deleted.status_code == 303 and live.saved.spec("lost") is None


def test_logging_out_ends_the_session_even_for_a_copied_cookie(client: TestClient) -> None:
    token = logged_in(client)
    copied = dict(client.cookies)
    client.post("/logout", data={"csrf": token})
    client.cookies.clear()
    for name, value in copied.items():
        client.cookies.set(name, value)
    assert client.get("/integrations").headers["location"] == "/login"


def test_bad_cursors_and_internal_errors_get_a_page_with_security_headers(
    live: LiveSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_console(PASSWORD, session_secret(PASSWORD, KEY), live)
    with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as client:
        logged_in(client)
        bad = client.get("/dead-letters?integration=default&after_ms=abc&code=²")
        assert bad.status_code == 400 and "after_ms" in bad.text
        monkeypatch.setattr(live.store, "debug_entries", lambda *a: 1 / 0)
        broken = client.get("/debugger")
        assert broken.status_code == 500 and "internal error" in broken.text
        assert "ZeroDivisionError" not in broken.text and broken.headers["x-frame-options"] == "DENY"


def test_workers_start_with_console_integrations_only_and_refuse_a_bad_key(redis_url: str) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**environment(redis_url, process=True, credentials=False), ENV_CONSOLE_KEY: KEY}
    probe = "import tasks.celeryapp as c; print(c.app.conf.beat_schedule['clevertap.assemble']['schedule'])"
    ok = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, check=False)
    assert ok.returncode == 0 and ok.stdout.strip() == b"1.0", ok.stderr
    check = "from tasks.celeryapp import _check_settings; _check_settings()"
    bad_env = {**env, ENV_CONSOLE_KEY: "not-a-key"}
    bad = subprocess.run(
        [sys.executable, "-c", check], env=bad_env, cwd=ROOT, capture_output=True, check=False
    )
    assert bad.returncode == 2 and b"must be a Fernet key" in bad.stderr


def test_an_ingest_task_finds_an_integration_saved_a_moment_ago_or_waits_for_it(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import runtime
    from pipeline.errors import UnknownIntegration
    from tasks.pipeline_tasks import RETRIED

    assert UnknownIntegration in RETRIED  # not known yet: retried, the events kept
    for key, value in {**environment(redis_url), ENV_CONSOLE_KEY: KEY}.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    try:
        assert "later" not in runtime.settings().integrations  # cached for a couple of seconds now
        SavedIntegrations(store, Fernet(KEY.encode())).save(
            "later", {"account_id": "L", "region": "eu1"}, "p"
        )
        result = runtime.ingest([{"type": "track", "event": "X", "userId": "u"}], "later")
        assert result.accepted == 1  # the worker looked again at once rather than failing the message
    finally:
        runtime.reset()


def test_editing_an_integration_keeps_its_own_preset(client: TestClient) -> None:
    import dataclasses

    from pipeline.console.forms import form_of, spec_from
    from pipeline.presets import Preset, load_preset

    config = load_settings(environment(None)).integration("default")
    assert load_preset("default").name == "Default"  # shown so; configured as "default"
    assert form_of(config)["preset"] == "default"
    other = dataclasses.replace(config, preset=Preset("Retail shops", {}, {}, key="retail"))
    values = form_of(other)
    assert values["preset"] == "retail"  # it was always "default": an edit saved another preset back
    assert spec_from(values, {"preset": "retail"})["preset"] == "retail"
    logged_in(client)
    page = client.get("/integrations/default/edit").text
    assert re.search(r'<option value="default" selected>', page), page  # the form shows the one it has


def test_the_form_takes_the_page_origins_allowed_to_post(client: TestClient, live: LiveSettings) -> None:
    token = logged_in(client)
    bad = client.post(
        "/integrations/new",
        data={"csrf": token, **form(allowed_origins="https://shop.example.com, shop.example.com/x")},
    )
    assert bad.status_code == 400
    assert re.search(r'id="error-allowed_origins">&#39;shop.example.com/x&#39; is not an origin', bad.text)
    good = client.post(
        "/integrations/new",
        data={"csrf": token, **form(allowed_origins="https://shop.example.com, https://*.shop.test")},
    )
    assert good.status_code == 303
    assert live.current().integration("shop").allowed_origins == (
        "https://shop.example.com",
        "https://*.shop.test",
    )
    edit = client.get("/integrations/shop/edit").text
    assert 'value="https://shop.example.com, https://*.shop.test"' in edit


def test_the_form_takes_the_event_lists_one_name_a_line(client: TestClient, live: LiveSettings) -> None:
    token = logged_in(client)
    both = client.post("/integrations/new", data={"csrf": token, **form(events_allow="A", events_deny="B")})
    assert both.status_code == 400
    assert re.search(r'id="error-events_deny">give at most one of events_allow or events_deny', both.text)
    good = client.post(
        "/integrations/new",
        data={"csrf": token, **form(events_allow="Order Completed\r\n  page \n\nSale, Big\n#launch")},
    )
    assert good.status_code == 303
    allow = live.current().integration("shop").events_allow
    assert allow == ("Order Completed", "page", "Sale, Big", "#launch")
    edit = client.get("/integrations/shop/edit").text
    assert ">Order Completed\npage\nSale, Big\n#launch</textarea>" in edit


def test_the_forget_page_asks_only_once_confirmed_and_never_shows_who(
    client: TestClient, store: Store
) -> None:
    assert client.get("/forget").status_code == 303  # a login first
    token = logged_in(client)
    page = client.get("/forget")
    assert page.status_code == 200 and "Forget a user" in page.text and "No forget requests yet" in page.text
    values = "jane@example.com\nuser_id: u-42\n"
    unconfirmed = client.post("/forget/ask", data={"csrf": token, "values": values, "confirm": "yes"})
    assert unconfirmed.status_code == 303 and "type+FORGET" in unconfirmed.headers["location"]
    assert store.request_ids() == []
    bad = client.post("/forget/ask", data={"csrf": token, "values": "nickname: jj", "confirm": "FORGET"})
    assert (
        "line+1%3A+unknown+kind" in bad.headers["location"]
        and "nickname" not in bad.headers["location"]
        and store.request_ids() == []
    )
    no_csrf = client.post("/forget/ask", data={"values": values, "confirm": "FORGET"})
    assert no_csrf.status_code == 403 and store.request_ids() == []
    asked = client.post("/forget/ask", data={"csrf": token, "values": values, "confirm": "FORGET"})
    assert asked.status_code == 303 and "done=forget+request" in asked.headers["location"]
    (rid,) = store.request_ids()
    req = store.request(rid)
    assert req is not None and req["state"] == "purging" and req["who"]["user_ids"] == ["u-42"]
    # suppressed at once: an event for her is filtered before any worker has run the request
    gen, digests = store.forgotten_view("default", refresh=True)
    assert gen != "0" and len(digests) == 2
    listing = client.get(asked.headers["location"])
    assert rid in listing.text and "purging" in listing.text
    assert "jane@example.com" not in listing.text and "u-42" not in listing.text


def test_running_imports_show_on_the_integrations_page(client: TestClient, store: Store) -> None:
    logged_in(client)
    iid = "abc123def4567890"
    store.begin_import("default", iid, {"file": "/data/orders.csv", "format": "csv"})
    store.push_import("default", iid, (0, 3), [b'{"type":"event"}'] * 3, [], {}, 1000, "0")
    page = client.get("/integrations").text
    assert f'id="import-{iid}"' in page and "/data/orders.csv" in page and "importing" in page
    store.cancel_import("default", iid)
    assert f'id="import-{iid}"' not in client.get("/integrations").text
