"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium; nothing
downloads a browser), against a real console process, a worker and beat, and the emulator: log in, add an
integration (a wrong region first, its error beside the field), see a worker deliver for it without a
restart, edit a property mapping and see it in the preview, open a debugger entry and its raw answer, and
replay a dead letter. Each page is saved as a screenshot (``CONSOLE_SCREENSHOTS=dir`` keeps them there too:
that is how docs/console/ is made)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet

from pipeline.config import ENV_CONSOLE_KEY, ENV_CONSOLE_PASSWORD
from pipeline.ingest import ingest
from pipeline.local.procs import answers, wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.runner import Stack, start_stack
from pipeline.saved import load_with_console
from pipeline.store import Store
from tests.helpers import emulator_records, environment

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.long,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason="no Chromium: apt-get install chromium chromium-driver (make test does, as root on Debian)",
    ),
]
PASSWORD = "browser-test-password"
SHOP_ACC, SHOP_PASS = "SHOP-ACC", "shop-passcode-123"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    env = {
        **environment(None, process=True, CLEVERTAP_FLUSH_INTERVAL="0.2"),
        ENV_CONSOLE_KEY: Fernet.generate_key().decode(),
        ENV_CONSOLE_PASSWORD: PASSWORD,
    }
    flags = (
        "--account",
        f"{SHOP_ACC}:{SHOP_PASS}",
        "--restricted-event",
        "Web Page Viewed",
        "--latency-ms",
        "20",
    )
    started = start_stack(tmp_path / "stack", base_env=env, emulator_flags=flags, workers=1)
    port = free_port()
    started.group.start(
        "console", [sys.executable, "-m", "pipeline", "console", "--port", str(port)], started.env,
        tmp_path / "stack" / "console.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    assert wait_for(lambda: answers(url + "/login"), 30, 0.2, started.group), started.logs()
    try:
        yield started, url
    finally:
        started.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1366,1100",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_console_in_chromium(stack: tuple[Stack, str], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    started, url = stack
    shots = tmp_path / "screenshots"
    shots.mkdir()
    keep = os.environ.get("CONSOLE_SCREENSHOTS")

    def shot(name: str) -> None:
        path = shots / f"{name}.png"
        browser.save_screenshot(str(path))
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    def fill(element_id: str, text: str) -> None:
        field = browser.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(text)

    # Log in.
    browser.get(url + "/integrations")
    assert browser.current_url.endswith("/login")
    shot("login")
    fill("password", PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    assert browser.current_url.endswith("/integrations")

    # Add an integration with a wrong region: the error is beside the field; fix it and save.
    browser.find_element(By.ID, "add-integration").click()
    fill("name", "shop")
    fill("account_id", SHOP_ACC)
    fill("passcode", SHOP_PASS)
    fill("region", "eu9")
    fill("consent_categories", "")
    fill("api_url", started.emulator.url if started.emulator else "")
    browser.find_element(By.ID, "save").click()
    error = browser.find_element(By.ID, "error-region")
    assert "must be one of us1, in1, eu1, sg1, aps3, mec1, sk1" in error.text
    assert SHOP_PASS not in browser.page_source  # the passcode is never sent back
    shot("integration-form-error")
    fill("region", "eu1")
    fill("passcode", SHOP_PASS)
    browser.find_element(By.ID, "save").click()
    assert "Saved integration shop" in browser.find_element(By.ID, "saved").text
    assert browser.find_element(By.ID, "integration-shop").is_displayed()

    # A worker started before the integration existed delivers for it (it reads console changes live),
    # sending to the emulator with the account and passcode saved in the console.
    store = Store.from_url(started.redis_url)
    emulator = started.emulator
    assert emulator is not None
    events = [
        {"type": "track", "event": "Product Viewed", "userId": f"s{n}", "messageId": f"shop-{n}",
         "timestamp": 1706540000, "properties": {"sku": f"SKU-{n}"}}
        for n in range(20)
    ] + [
        {"type": "page", "name": "Home", "userId": f"p{n}", "messageId": f"page-{n}", "timestamp": 1706540000}
        for n in range(3)
    ]  # fmt: skip
    ingest(events, integration="shop", settings=load_with_console(started.env), store=store)
    delivered = wait_for(lambda: len(emulator_records(emulator.url, SHOP_ACC)) == 20, 60, 0.3, started.group)
    assert delivered, started.logs()
    assert wait_for(lambda: store.dead_letter_count("shop") == 3, 30, 0.3, started.group)
    browser.get(url + "/integrations")
    assert "20" in browser.find_element(By.ID, "integration-shop").text
    shot("integrations")

    # Edit a property mapping and see it in the preview.
    browser.get(url + "/integrations/shop/mappings")
    fill("properties_text", "Product Viewed: sku = SKU Code")
    fill("events_input", '{"type":"track","event":"Product Viewed","userId":"u1","properties":{"sku":"A-1"}}')
    browser.find_element(By.ID, "preview").click()
    record = browser.find_element(By.CSS_SELECTOR, "#preview-results pre.record").text
    assert '"SKU Code": "A-1"' in record
    browser.execute_script(
        "arguments[0].scrollIntoView()", browser.find_element(By.ID, "properties_text")
    )  # the edit and its preview in one picture
    shot("mappings-preview")
    browser.find_element(By.ID, "save-mappings").click()
    assert browser.find_element(By.ID, "mappings-saved").is_displayed()

    # The debugger: open an attempt and see CleverTap's raw answer and the refused rows.
    browser.get(url + "/debugger?integration=shop&failed=1")
    shot("debugger")
    browser.find_element(By.CSS_SELECTOR, "#attempts a.batch").click()
    raw = browser.find_element(By.CSS_SELECTOR, "pre.raw").text
    assert (
        '"status": "partial"' in raw
        and "restricted" in browser.find_element(By.CSS_SELECTOR, "table.refused").text
    )
    shot("debugger-attempt")

    # Dead letters: the restriction is lifted; replay one and see it delivered.
    requests.post(emulator.url + "/_emulator/faults", json={"restricted_events": []}, timeout=5)
    browser.get(url + "/dead-letters?integration=shop")
    shot("dead-letters")
    browser.find_elements(By.CSS_SELECTOR, "#dead-letters input[name=id]")[0].click()
    browser.find_element(By.ID, "replay").click()
    assert "replayed 1 records" in browser.find_element(By.ID, "done").text
    assert wait_for(lambda: len(emulator_records(emulator.url, SHOP_ACC)) == 21, 60, 0.3, started.group)
    browser.find_elements(By.CSS_SELECTOR, "#dead-letters a.letter")[0].click()
    assert '"stage": "api"' in browser.find_element(By.ID, "letter").text
    shot("dead-letter")

    # Forget a user: refused until confirmed, then the workers remove the copies and CleverTap deletes.
    browser.get(url + "/forget")
    fill("values", "user_id: s1\nshopper.one@example.com")
    fill("confirm", "yes")
    browser.find_element(By.ID, "forget").click()
    assert "type FORGET to confirm" in browser.find_element(By.ID, "error").text
    fill("values", "user_id: s1\nshopper.one@example.com")
    fill("confirm", "FORGET")
    browser.find_element(By.ID, "forget").click()
    assert "forget request" in browser.find_element(By.ID, "done").text
    (rid,) = store.request_ids()
    assert wait_for(lambda: (store.request(rid) or {}).get("state") == "done", 60, 0.3, started.group), (
        store.request(rid),
        started.logs(),
    )
    deleted = requests.get(emulator.url + "/_emulator/deleted", timeout=5).json()[SHOP_ACC]
    assert ["identity", "s1"] in deleted and ["identity", "shopper.one@example.com"] in deleted
    browser.get(url + "/forget")
    row = browser.find_element(By.CSS_SELECTOR, "#requests tbody tr")
    assert rid in row.text and "done" in row.text and "s1" not in row.text.replace(rid, "")
    shot("forget")

    logs = started.logs(tail=10**7)
    assert SHOP_PASS not in logs and PASSWORD not in logs
