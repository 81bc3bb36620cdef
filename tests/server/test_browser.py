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

from ..support import CI, ROOT, running_flower
from .conftest import ADMIN_KEY, NS_A, Live, flaky_path, items

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


def logged_in(browser: Any, url: str) -> tuple[Any, Any]:
    """A new browser context and tab, logged in to the dashboard at `url`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(url + "/")
    assert tab.url.endswith("/login")
    tab.fill("input[name=key]", ADMIN_KEY)
    tab.click("form.login button")
    tab.wait_for_url(url + "/")
    return context, tab


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    context, tab = logged_in(browser, live.url)
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


def test_cancel_a_run_from_its_page(page: Any, live: Live) -> None:
    run_id = trigger(live, "echo", inputs={"text": "cancel me"}, start_delay=60_000)
    page.goto(f"{live.url}/ui/{NS_A}/run/{run_id}")
    assert page.get_attribute("#live-state", "data-active") == "1"
    page.once("dialog", lambda dialog: dialog.accept())  # "Cancel this run?"
    page.click("#live-state button:has-text('Cancel run')")
    page.wait_for_selector('#live-state[data-active="0"]')
    assert page.locator("#live-state .summary .badge").inner_text() == "CANCELLED"
    assert page.locator("#live-state button:has-text('Cancel run')").count() == 0
    with api(live) as c:
        assert c.get(f"/v0/namespace/{NS_A}/run/{run_id}").json()["status"] == "CANCELLED"
        states = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states").json()["states"]
    assert [s["status"] for s in states] == ["CANCELLED"]


WATCH_END = """() => {
  window.exoSeenEnd = null;
  const box = document.getElementById("live");
  new MutationObserver(() => {
    const state = document.getElementById("live-state");
    if (window.exoSeenEnd === null && state && state.dataset.active === "0") {
      window.exoSeenEnd = performance.timeOrigin + performance.now();  // epoch ms, this host's clock
    }
  }).observe(box, { childList: true, subtree: true });
}"""


def test_the_live_page_is_at_most_one_second_behind_the_ledger(page: Any, live: Live) -> None:
    """The lag: from the run's `finished_at` in the ledger to the page showing it ended, without a reload."""
    from exo_celery.ledger.repo import Repo

    repo = Repo(live.stack.settings().ledger_url)
    lags = []
    for _ in range(3):
        run_id = trigger(live, "fanout", inputs={"items": items(20)}, start_delay=1500)
        page.goto(f"{live.url}/ui/{NS_A}/run/{run_id}")
        assert page.get_attribute("#live-state", "data-active") == "1"
        page.evaluate(WATCH_END)
        page.wait_for_selector('#live-state[data-active="0"]', timeout=60_000)
        seen_ms = page.evaluate("window.exoSeenEnd")
        assert seen_ms is not None  # it was the refresh that showed the end, not the first render
        run = repo.get_run(run_id)
        assert run is not None and run["status"] == "SUCCESS"
        lags.append(seen_ms / 1000 - run["finished_at"])
    print(f"live page lag behind the ledger (s): {', '.join(f'{lag:.3f}' for lag in lags)}")
    assert all(0 <= lag <= 1.0 for lag in lags), lags


FLOWER_READY = 30.0


@pytest.fixture(scope="module")
def flower(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Flower (`celery flower`) on the live stack's broker; yields its base URL."""
    with running_flower(live.stack, tmp_path_factory.mktemp("flower") / "flower.log", FLOWER_READY) as base:
        yield base


def executed_in_flower(live: Live, flower: str) -> tuple[str, str]:
    """An echo state, and the id of the task Flower recorded for it (Flower only sees events sent after it
    connected)."""
    import time

    deadline = time.monotonic() + FLOWER_READY
    while True:
        run_id = trigger(live, "echo", inputs={"text": "seen by flower"})
        live.wait_run(NS_A, run_id)
        with api(live) as c:
            state_id: str = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states").json()["states"][0]["id"]
        for _ in range(10):
            tasks = httpx.get(f"{flower}/api/tasks", params={"limit": 5000}, timeout=10).json()
            found = [uuid for uuid, t in tasks.items() if f"state_id={state_id!r}" in (t.get("args") or "")]
            if found:
                return state_id, found[0]
            time.sleep(0.3)
        assert time.monotonic() < deadline, "Flower received no task events"


def test_the_flower_link_opens_flowers_tasks_page_on_the_states_task(browser: Any, live: Live, flower: str) -> None:
    from .conftest import A_KEY, start_server

    proc, url = start_server(live.stack, {"EXO_API_KEY": f"{ADMIN_KEY},{A_KEY}:{NS_A}", "EXO_FLOWER_URL": flower})
    try:
        state_id, task_id = executed_in_flower(live, flower)
        context, tab = logged_in(browser, url)
        try:
            tab.goto(f"{url}/ui/{NS_A}/state/{state_id}")
            href = tab.get_attribute("a.flower", "href")
            assert href and href.startswith(f"{flower}/tasks?name=")
            fetched = httpx.get(href, timeout=10)  # the URL is a page the running Flower serves
            assert fetched.status_code == 200 and 'id="tasks-table"' in fetched.text
            tab.click("a.flower")
            tab.wait_for_url(re.compile(re.escape(flower) + r"/tasks\?name=.*"))
            # The search box holds the filter, and the table shows this state's one task (its args, which
            # name the state, are not a default column: the row is the task Flower's API says has them).
            assert state_id in tab.locator("#tasks-table_filter input").input_value()
            tab.wait_for_selector("#tasks-table_info:has-text('Showing 1 to 1 of 1 tasks')")
            row = tab.locator("#tasks-table tbody tr")
            assert row.count() == 1 and task_id in row.inner_text() and ".Echo" in row.inner_text()
        finally:
            context.close()
    finally:
        proc.stop()
