"""The dashboard in a real browser: Playwright for Python driving Debian's chromium (never Playwright's download).

`.ci/run` installs chromium with apt-get; under CI=true a missing browser fails these tests instead of
skipping them. The run-page screenshot in docs/img/run-page.png is made here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import CI, ROOT
from .conftest import ADMIN_KEY, NS_A, Live, flaky_path, items

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
CHROMIUM = os.environ.get("EXO_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "img" / "run-page.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the test extra installs it
        if CI:
            pytest.fail(f"playwright is not installed: {exc}", pytrace=False)
        pytest.skip(f"playwright is not installed: {exc}")
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} not found (apt-get install -y chromium)"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(live.url + "/")
    assert tab.url.endswith("/login")
    tab.fill("input[name=key]", ADMIN_KEY)
    tab.click("form.login button")
    tab.wait_for_url(live.url + "/")
    try:
        yield tab
    finally:
        context.close()


def api(live: Live) -> httpx.Client:
    return live.client()


def trigger(live: Live, graph: str, **body: Any) -> str:
    with api(live) as c:
        response = c.post(f"/v0/namespace/{NS_A}/graph/{graph}/trigger", json=body)
        assert response.status_code == 200, response.text
        run_id: str = response.json()["run_id"]
        return run_id


def test_namespaces_and_runs_list(page: Any, live: Live) -> None:
    run_id = trigger(live, "echo", inputs={"text": "listed"})
    live.wait_run(NS_A, run_id)
    assert page.locator(f"section.ns h2:has-text('{NS_A}')").count() == 1
    assert page.locator("text=Registered nodes").count() >= 1
    page.click(f"section.ns:has(h2:has-text('{NS_A}')) >> text=runs »")
    page.wait_for_selector("table.runs")
    link = page.locator(f"a.run-link[href$='{run_id}']")
    assert link.count() == 1
    page.select_option("select[name=graph]", "echo")
    page.click("form.filters button")
    page.wait_for_url(re.compile(r".*graph=echo.*"))
    graphs = page.locator("table.runs tbody tr td:nth-child(2)").all_inner_texts()
    assert graphs and set(graphs) == {"echo"}


def test_a_running_fan_out_turns_success_live(page: Any, live: Live) -> None:
    run_id = trigger(live, "fanout", inputs={"items": items(200)}, start_delay=1500)
    page.goto(f"{live.url}/ui/{NS_A}/run/{run_id}")
    assert page.get_attribute("#live-state", "data-active") == "1"  # still PENDING or RUNNING
    up = page.locator("svg.dag g.node[data-identifier=up]")
    assert up.count() == 1  # one box for the 200 branches
    page.wait_for_selector('#live-state[data-active="0"]', timeout=90_000)  # no reload: the page refreshed itself
    assert page.locator("#live-state .summary .badge").inner_text() == "SUCCESS"
    assert "200 / 200 SUCCESS" in (up.text_content() or "")
    assert "s-success" in (up.get_attribute("class") or "")
    assert "200 / 200 branches done" in page.locator(".unite").inner_text()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_retry_an_errored_state_from_its_run_page(page: Any, live: Live, tmp_path: Path) -> None:
    run_id = trigger(live, "flaky", inputs={"path": flaky_path(tmp_path)})
    assert live.wait_run(NS_A, run_id)["status"] == "FAILED"
    page.goto(f"{live.url}/ui/{NS_A}/run/{run_id}")
    page.click("table.states button:has-text('Retry')")
    page.wait_for_url(re.compile(rf".*/ui/{NS_A}/state/[0-9a-f]{{32}}$"))
    new_id = page.url.rsplit("/", 1)[1]
    attempts = page.locator("table.attempts tbody tr")
    assert attempts.count() == 2  # the failed attempt (now RETRY_CREATED) and this new one
    assert "(this one)" in attempts.nth(1).inner_text()
    first = attempts.nth(0).inner_text()
    assert "RETRY_CREATED" in first and "flaky failure 1" in first
    assert live.wait_run(NS_A, run_id)["status"] == "SUCCESS"
    page.reload()
    assert "SUCCESS" in page.locator("main p .badge").first.inner_text()
    assert page.url.endswith(new_id)


def test_trigger_a_graph_from_its_page(page: Any, live: Live) -> None:
    page.goto(f"{live.url}/ui/{NS_A}/graph/echo")
    page.fill("form#trigger-form input[data-key=text]", "from the browser")
    page.click("form#trigger-form button")
    page.wait_for_url(re.compile(rf".*/ui/{NS_A}/run/[0-9a-f]{{32}}$"))
    run_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector('#live-state[data-active="0"]', timeout=60_000)
    assert page.locator("#live-state .summary .badge").inner_text() == "SUCCESS"
    with api(live) as c:
        states = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states").json()["states"]
    assert states[0]["inputs"] == {"text": "from the browser"}
