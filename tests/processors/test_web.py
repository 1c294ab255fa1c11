"""`journeys serve` and `journeys report` on the demo: the API, then the page in a real headless Chromium.

The browser tests need Debian's `chromium` and `chromium-driver` (`.ci/run`
installs them); elsewhere they are skipped with the reason. A screenshot of
the page is kept in `test-artifacts/` for humans to look at.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from processors.cli import app as cli
from processors.demo import DemoResult
from processors.web import create_web_app

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def api(client: Client, calls: Callable[[TestClient], Any]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_web_app(client))) as http:
            return await calls(http)

    return asyncio.run(main())


def test_the_api_answers_with_the_demo_numbers(mining_demo: tuple[Client, DemoResult]) -> None:
    client, result = mining_demo

    async def calls(http: TestClient) -> dict[str, Any]:
        page = await http.get("/")
        assert page.status == 200 and "Where customers leave" in await page.text()
        plotly = await http.get("/assets/plotly.min.js")
        assert plotly.status == 200 and len(await plotly.read()) > 1_000_000
        everything = await (await http.get("/api/all")).json()
        persona = await (await http.get("/api/all", params={"persona": "bargain_hunter"})).json()
        bad = await http.get("/api/all", params={"start": "yesterday"})
        assert bad.status == 400 and "start must be a date" in (await bad.json())["error"]
        wrong_channel = await http.get("/api/all", params={"channel": "fax"})
        assert wrong_channel.status == 400
        top = everything["dropoffs"][0]
        examples = await (
            await http.get(
                "/api/dropoff-examples",
                params={f"point_{k}": top[k] for k in ("phase", "channel", "action", "detail")},
            )
        ).json()
        timeline = await (
            await http.get("/api/timeline", params={"customer": examples[0]["customer_id"]})
        ).json()
        injection = await http.get("/api/all", params={"persona": "x' OR 1=1 --"})
        assert (await injection.json())["overview"]["journeys"] == 0  # a value, never SQL
        return {"all": everything, "persona": persona, "examples": examples, "timeline": timeline}

    answers = api(client, calls)
    journeys = client.query("SELECT count() FROM journeys").result_rows[0][0]
    assert answers["all"]["overview"]["journeys"] == journeys
    assert (
        answers["persona"]["overview"]["journeys"]
        == client.query("SELECT count() FROM journeys WHERE persona = 'bargain_hunter'").result_rows[0][0]
        < journeys
    )
    planted = {(p["dropoff_key"]["phase"], p["dropoff_key"]["action"]) for p in result.truth["pain_points"]}
    assert {(d["phase"], d["action"]) for d in answers["all"]["dropoffs"][:2]} == planted
    assert len(answers["examples"]) == 20
    assert {event["channel"] for event in answers["timeline"]} >= {"web", "email"}
    phases = [step["phase"] for step in answers["all"]["funnel"]]
    assert phases == ["orientation", "consideration", "purchase", "usage", "retention"]


def test_the_report_is_one_file_without_network(
    mining_demo: tuple[Client, DemoResult], chdb_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    dsn = f"chdb://{chdb_path}?database=mining_demo"
    result = CliRunner().invoke(cli, ["report", "--out", str(out), "--db", dsn])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    tags = ElementsWithSources()
    tags.feed(html)
    assert tags.scripts == 3 and tags.sources == []  # everything inline: opens without a network
    assert "window.JOURNEYS_DATA={" in html


class ElementsWithSources(HTMLParser):
    """Counts <script> elements and collects any src/href a browser would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts = 0
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        found = [value or "" for name, value in attrs if name in ("src", "href")]
        self.sources += [value for value in found if not value.startswith("data:")]


# -- in a real browser


def browser() -> Any:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"no {CHROMIUM} / {CHROMEDRIVER}: install Debian's chromium and chromium-driver (.ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def live_page(mining_demo: tuple[Client, DemoResult]) -> Iterator[str]:
    """`journeys serve`'s app on a free port, in a thread of this process (the only one holding chDB)."""
    client, _ = mining_demo
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_web_app(client))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def wait_for(driver: Any, script: str, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; errors: {driver.execute_script(ERROR_TEXT)}")


ERROR_TEXT = "return document.getElementById('error').textContent"
LOADS = "return Number(document.body.dataset.loaded || 0)"


def metric(driver: Any, name: str) -> int:
    text = driver.find_element("css selector", f"#overview [data-metric='{name}'] b").text
    return int(text.replace(",", ""))


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_page_in_chromium(live_page: str, mining_demo: tuple[Client, DemoResult]) -> None:
    client, _ = mining_demo
    driver = browser()
    try:
        driver.get(live_page)
        wait_for(driver, LOADS, "the page to load")
        assert console_errors(driver) == []
        # The demo's numbers, in the overview, the funnel table and the charts.
        journeys = client.query("SELECT count() FROM journeys").result_rows[0][0]
        assert metric(driver, "journeys") == journeys
        funnel = driver.find_elements("css selector", "#funnel-table tbody tr")
        assert [row.get_attribute("data-phase") for row in funnel] == [
            "orientation",
            "consideration",
            "purchase",
            "usage",
            "retention",
        ]
        reached = client.query(
            "SELECT count() FROM journeys WHERE has(phases_reached, 'orientation')"
        ).result_rows[0][0]
        assert funnel[0].find_elements("css selector", "td")[1].text == str(reached)
        for chart in ("funnel", "sankey", "switches", "emotion"):
            assert driver.execute_script(f"return document.querySelectorAll('#{chart} svg').length") > 0, (
                chart
            )

        # A filter changes the numbers.
        driver.find_element("css selector", "#filter-persona option[value='bargain_hunter']").click()
        driver.find_element("id", "apply").click()
        wait_for(driver, LOADS + " >= 2", "the filtered page")
        persona_journeys = client.query(
            "SELECT count() FROM journeys WHERE persona = 'bargain_hunter'"
        ).result_rows[0][0]
        assert metric(driver, "journeys") == persona_journeys < journeys

        # Drill down from the top drop-off point to customers, then to one customer's timeline.
        driver.find_element("css selector", "#dropoffs tbody tr").click()
        wait_for(driver, "return document.querySelectorAll('#examples tbody tr').length", "example customers")
        driver.find_element("css selector", "#examples tbody tr").click()
        wait_for(driver, "return !document.getElementById('timeline').hidden", "a timeline")
        channels = {
            row.get_attribute("data-channel")
            for row in driver.find_elements("css selector", "#timeline tbody tr")
        }
        assert len(channels) >= 2  # cross-channel
        assert console_errors(driver) == []

        ARTIFACTS.mkdir(exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(ARTIFACTS / "page.png"))
    finally:
        driver.quit()


def test_the_report_opens_offline_in_chromium(mining_demo: tuple[Client, DemoResult], tmp_path: Path) -> None:
    client, _ = mining_demo
    from processors.web import report_html

    out = tmp_path / "report.html"
    out.write_text(report_html(client))
    driver = browser()
    try:
        driver.get(out.as_uri())
        wait_for(driver, LOADS, "the report to render")
        assert console_errors(driver) == []
        assert metric(driver, "journeys") == client.query("SELECT count() FROM journeys").result_rows[0][0]
        driver.find_element("css selector", "#dropoffs tbody tr").click()
        wait_for(driver, "return document.querySelectorAll('#examples tbody tr').length", "embedded examples")
        driver.find_element("css selector", "#examples tbody tr").click()
        wait_for(driver, "return !document.getElementById('timeline').hidden", "an embedded timeline")
        assert driver.execute_script(ERROR_TEXT) == ""
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(out, ARTIFACTS / "report.html")
    finally:
        driver.quit()
