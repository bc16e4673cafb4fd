"""A website's own tag, in a real headless Chromium: a shop page on one origin loads Segment's browser SDK
(``@segment/analytics-next``) or RudderStack's (``@rudderstack/analytics-js`` v3), both from the npm
registry (pinned in tests/browser, installed by ``make test``), and points it at a ``clevertap-pipeline
collect`` process on another origin, whose address is all the snippet needs: the SDK loads its settings
from the collector too. A real worker and beat deliver to the emulator; every call must arrive as the
Default preset maps it, exactly once. The same page with its clock an hour fast still yields the right
times; a page on an origin the integration does not allow gets nothing queued."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.local.procs import answers, wait_for
from pipeline.local.redis_server import free_port
from pipeline.local.runner import Stack, start_stack
from pipeline.store import Store
from tests.helpers import ROOT, dead_letters, emulator_records, environment, serve

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SDKS = ROOT / "tests" / "browser" / "node_modules"
SEGMENT_DIR = SDKS / "@segment" / "analytics-next" / "dist" / "umd"
RUDDER_JS = (
    SDKS / "@rudderstack" / "analytics-js" / "dist" / "npm" / "modern" / "bundled" / "umd" / "index.js"
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason="no Chromium: apt-get install chromium chromium-driver (make test does, as root on Debian)",
    ),
    pytest.mark.skipif(
        not (SEGMENT_DIR.exists() and RUDDER_JS.exists()),
        reason="no browser SDKs: `make test` installs them with npm ci in tests/browser when npm is there",
    ),
]
KEY = "wk-browser-tag-0123456789"
EMAIL = "ana.browser@example.com"

#: The shop's calls, as a page makes them: an anonymous visit, a login, a product, an order, a named page.
CALLS = """
  await sdk.page("Home");
  await sdk.identify("user-77", {email: "EMAIL", name: "Ana Browser"});
  await sdk.track("Product Viewed", {product_id: "SKU-A", name: "Widget", price: 49.99});
  await sdk.track("Order Completed", {order_id: "ORD-B1", revenue: 99.98, currency: "EUR",
    products: [{product_id: "SKU-A", name: "Widget", price: 49.99, quantity: 2}]});
  await sdk.page("Checkout", "Thank You");
""".replace("EMAIL", EMAIL)

PAGES = {
    "segment": """<!doctype html><title>shop</title><script src="/sdk/segment/index.js"></script><script>
const sdk = AnalyticsNext.AnalyticsBrowser.load({writeKey: "%(key)s", cdnURL: "%(collector)s"});
(async () => { %(calls)s window.tagDone = true; })().catch(e => { window.tagError = String(e); });
</script>""",
    "rudderstack": """<!doctype html><title>shop</title><script src="/sdk/rudder/index.js"></script><script>
const ra = new rudderanalytics.RudderAnalytics();
ra.load("%(key)s", "%(collector)s", {configUrl: "%(collector)s", logLevel: "ERROR",
  loadIntegration: false, consentManagement: {enabled: false}});
const call = (name, ...args) => new Promise(done => ra[name](...args, () => done()));
const sdk = {page: (...a) => call("page", ...a), identify: (...a) => call("identify", ...a),
             track: (...a) => call("track", ...a)};
ra.ready(() => (async () => { %(calls)s window.tagDone = true; })());
</script>""",
}

CLOCK_AN_HOUR_FAST = """(() => { const R = Date, off = 3600 * 1000;
  class D extends R { constructor(...a) { if (a.length) { super(...a); } else { super(R.now() + off); } }
                      static now() { return R.now() + off; } }
  D.UTC = R.UTC; D.parse = R.parse; window.Date = D; })();"""


def page_server(sdk: str, collector: str) -> Any:
    """The shop's web server: its page and the SDK's files."""
    page = (PAGES[sdk] % {"key": KEY, "collector": collector, "calls": CALLS}).encode()

    class Shop(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/":
                body, kind = page, "text/html"
            elif (
                path.startswith("/sdk/segment/")
                and "/" not in path[13:]
                and (SEGMENT_DIR / path[13:]).is_file()
            ):
                body, kind = (SEGMENT_DIR / path[13:]).read_bytes(), "application/javascript"
            elif path == "/sdk/rudder/index.js":
                body, kind = RUDDER_JS.read_bytes(), "application/javascript"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return serve(Shop)


@contextmanager
def pipeline_for(
    tmp_path: Path, shop_origin: str, port: int, anonymous: str = "filter"
) -> Iterator[tuple[Stack, str]]:
    env = environment(
        None, process=True, CLEVERTAP_FLUSH_INTERVAL="0.2", CLEVERTAP_WRITE_KEY=KEY,
        CLEVERTAP_ALLOWED_ORIGINS=shop_origin, CLEVERTAP_ANONYMOUS=anonymous,
    )  # fmt: skip
    started = start_stack(tmp_path / "stack", base_env=env, emulator_flags=("--latency-ms", "20"), workers=1)
    started.group.start(
        "collector", [sys.executable, "-m", "pipeline", "collect", "--port", str(port)], started.env,
        tmp_path / "stack" / "collector.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: answers(url + "/health"), 30, 0.2, started.group), started.logs()
        yield started, url
    finally:
        started.stop()


@contextmanager
def chromium(fast_clock: bool = False) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        if fast_clock:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CLOCK_AN_HOUR_FAST})
        yield driver
    finally:
        driver.quit()


def visit(driver: Any, url: str) -> None:
    driver.get(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = driver.execute_script("return [window.tagDone || false, window.tagError || null];")
        if state[0] or state[1]:
            assert state[1] is None, state[1]
            time.sleep(2)  # the SDK's queue sends what the calls queued
            BROWSER_LOG[:] = driver.get_log("browser")
            return
        time.sleep(0.2)
    raise AssertionError("the page's tag did not finish: " + str(driver.get_log("browser")))


BROWSER_LOG: list[Any] = []  # the last visit's console, for a failure's message


def delivered(stack: Stack, n: int) -> list[dict[str, Any]]:
    assert stack.emulator is not None
    emulator = stack.emulator.url
    if not wait_for(lambda: len(emulator_records(emulator)) >= n, 30, 0.3):
        store = Store.from_url(stack.redis_url)
        try:
            found = {"stats": store.stats("default"), "dead letters": dead_letters(store),
                     "records": emulator_records(emulator)}  # fmt: skip
        finally:
            store.r.close()
        raise AssertionError(f"{found}\n{BROWSER_LOG}\n{stack.logs()}")
    time.sleep(1.5)  # and nothing more arrives (each call exactly once)
    return emulator_records(emulator)


@pytest.mark.parametrize("anonymous", ["filter", "hold"])
@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_a_shop_page_tagged_with_the_sdk_delivers_every_call_as_mapped_once(
    sdk: str, anonymous: str, tmp_path: Path
) -> None:
    expected = 5 if anonymous == "hold" else 4  # held, the anonymous Home view arrives too; else filtered
    with serve_shop(sdk) as (shop, port), pipeline_for(tmp_path, shop, port, anonymous) as (stack, _):
        with chromium() as driver:
            visit(driver, shop + "/")
        records = delivered(stack, expected)
    assert all(r["identity"] == EMAIL for r in records), records  # the Home view too, under the email
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_name.setdefault(r.get("evtName", r["type"]), []).append(r)
    pages = [p["evtData"]["name"] for p in by_name["Web Page Viewed"]]
    assert pages == (["Home", "Thank You"] if anonymous == "hold" else ["Thank You"]), records
    assert sorted(by_name) == ["Charged", "Product Viewed", "Web Page Viewed", "profile"], records
    assert len(records) == expected  # nothing twice
    charged = by_name["Charged"][0]["evtData"]
    assert (charged["Charged ID"], charged["Amount"], charged["Currency"]) == ("ORD-B1", 99.98, "EUR")
    assert charged["Items"][0]["product_id"] == "SKU-A"
    assert by_name["profile"][0]["profileData"]["Email"] == EMAIL
    now = time.time()
    assert all(abs(r["ts"] - now) < 120 for r in records)


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_a_visitors_clock_an_hour_fast_still_gives_the_true_times(sdk: str, tmp_path: Path) -> None:
    with serve_shop(sdk) as (shop, port), pipeline_for(tmp_path, shop, port) as (stack, _):
        assert stack.emulator is not None
        with chromium(fast_clock=True) as driver:
            visit(driver, shop + "/")
        records = delivered(stack, 4)
    now = time.time()
    assert all(abs(r["ts"] - now) < 60 for r in records), [r["ts"] - now for r in records]


def test_a_page_on_an_origin_the_integration_does_not_allow_gets_nothing_queued(tmp_path: Path) -> None:
    with (
        serve_shop("segment") as (shop, port),
        pipeline_for(tmp_path, "https://only.example.com", port) as (stack, _),
    ):
        with chromium() as driver:
            driver.get(shop + "/")
            time.sleep(3)  # the tag tries: its settings and its calls are refused (CORS)
            # and a simple text/plain POST, which a browser sends without asking first: refused by the
            # collector itself (the Origin is not the integration's), so nothing is queued
            sent = driver.execute_script(
                "return fetch(arguments[0] + '/v1/t', {method: 'POST', mode: 'no-cors', body: arguments[1]})"
                ".then(() => 'sent', () => 'failed');",
                f"http://127.0.0.1:{port}",
                orjson.dumps({"event": "Sneaky", "userId": "u1", "writeKey": KEY}).decode(),
            )
            assert sent == "sent"
            time.sleep(1)
        store = Store.from_url(stack.redis_url)
        try:
            assert store.stats("default").get("accepted", 0) == 0 and store.depth("default")["pending"] == 0
        finally:
            store.r.close()
        assert stack.emulator is not None and emulator_records(stack.emulator.url) == []


@contextmanager
def serve_shop(sdk: str) -> Iterator[tuple[str, int]]:
    """The shop's page server, pointed at a collector on a port picked now (started afterwards)."""
    port = free_port()
    collector = f"http://127.0.0.1:{port}"
    with page_server(sdk, collector) as shop:
        yield shop, port
