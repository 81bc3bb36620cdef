"""A state's detail against a live server and real workers: the store keys it wrote (masked, purged with
its run), a unite state's parents, and which live runtimes serve a node (and what waits when none does)."""

from __future__ import annotations

import hashlib
import re
import time

import httpx
from sqlalchemy import create_engine, func, select, update

from exo_celery.ledger.repo import Repo
from exo_celery.ledger.tables import runs, store_writes

from ..support import uid
from .conftest import ADMIN_KEY, GRAPHS, NS_A, Live, items

SECRET = "top-secret-9f8e7d"  # the `secret` graph's


def browser_like(live: Live) -> httpx.Client:
    """A client with the dashboard's session cookie (what a logged-in browser sends)."""
    c = live.client(None)
    c.cookies.set("exo_session", hashlib.sha256(ADMIN_KEY.encode()).hexdigest())
    return c


def ledger_url(live: Live) -> str:
    return live.stack.settings().ledger_url


def test_a_states_store_writes_are_shown_masked_and_purged_with_its_run(live: Live) -> None:
    with live.client() as c:
        run_id = c.post(f"/v0/namespace/{NS_A}/graph/secret/trigger", json={"inputs": {"mode": "leak-store"}}).json()[
            "run_id"
        ]
        assert live.wait_run(NS_A, run_id)["status"] == "SUCCESS"
        (state,) = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states").json()["states"]
        details = c.get(f"/v0/namespace/{NS_A}/graph/secret/run/{run_id}/node/{state['id']}")
        assert details.status_code == 200, details.text
        writes = details.json()["store_writes"]
        assert [(w["key"], w["value"]) for w in writes] == [("plain", "visible-value"), ("token", "key=***")]
        assert all(w["written_at"] for w in writes)
        assert SECRET not in details.text

        echo = c.post(f"/v0/namespace/{NS_A}/graph/echo/trigger", json={"inputs": {"text": "no store"}}).json()
        live.wait_run(NS_A, echo["run_id"])
        (plain,) = c.get(f"/v0/namespace/{NS_A}/run/{echo['run_id']}/states").json()["states"]
        assert (
            c.get(f"/v0/namespace/{NS_A}/graph/echo/run/{echo['run_id']}/node/{plain['id']}").json()["store_writes"]
            == []
        )

    with browser_like(live) as b:
        page = b.get(f"/ui/{NS_A}/state/{state['id']}")
        assert page.status_code == 200
        table = re.search(r'<table class="store-writes">.*?</table>', page.text, re.S)
        assert table, page.text
        assert "<code>token</code>" in table.group(0) and "<code>key=***</code>" in table.group(0)
        assert "<code>visible-value</code>" in table.group(0)
        assert SECRET not in page.text
        assert "this state wrote no store key" in b.get(f"/ui/{NS_A}/state/{plain['id']}").text

    # Retention deletes the rows with the run (the run is made old; no other run is that old).
    engine = create_engine(ledger_url(live))
    try:
        with engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(finished_at=1.0))
        assert Repo(ledger_url(live)).purge_finished_runs(older_than=2.0) == 1
        with engine.connect() as conn:
            left = conn.execute(select(func.count()).where(store_writes.c.run_id == run_id)).scalar_one()
        assert left == 0
    finally:
        engine.dispose()


def test_a_unite_states_parents_name_the_state_it_waited_on(live: Live) -> None:
    with live.client() as c:
        run_id = c.post(f"/v0/namespace/{NS_A}/graph/fanout/trigger", json={"inputs": {"items": items(3)}}).json()[
            "run_id"
        ]
        assert live.wait_run(NS_A, run_id)["status"] == "SUCCESS"
        states = c.get(f"/v0/namespace/{NS_A}/run/{run_id}/states").json()["states"]
        (collect,) = [s for s in states if s["identifier"] == "collect"]
        executed = [s for s in states if s["identifier"] == "split" and s["attempts"] > 0]
        assert len(executed) == 1  # the split that ran (its other outputs are states that never ran)
        details = c.get(f"/v0/namespace/{NS_A}/graph/fanout/run/{run_id}/node/{collect['id']}").json()
        assert details["parents"] == {"split": executed[0]["id"]}
        structure = c.get(f"/v0/namespace/{NS_A}/states/run/{run_id}/graph").json()
        assert {"source": executed[0]["id"], "target": collect["id"]} in structure["edges"]
    with browser_like(live) as b:
        page = b.get(f"/ui/{NS_A}/state/{collect['id']}").text
        assert f'split: <a href="/ui/{NS_A}/state/{executed[0]["id"]}">' in page and "none (the root)" not in page


def served_by(page: str, node: str) -> str:
    """The "served by" cell of a node's row on the namespaces page."""
    row = re.search(rf"<tr><td><code>{node}</code></td>(.*?)</tr>", page, re.S)
    assert row, page
    return re.findall(r"<td>(.*?)</td>", row.group(1), re.S)[2]


def test_served_by_shows_live_runtimes_and_a_stopped_one_leaves_its_nodes_waiting(live: Live) -> None:
    ns = uid("srvc")
    worker = live.stack.start_worker(ns, concurrency=1)
    found = re.search(r"runtime (\S+) \(([0-9a-f]+)\) serves", worker.text())
    assert found, worker.text()
    name = found.group(1)
    with live.client() as c:
        body = GRAPHS["echo"]
        assert c.put(f"/v0/namespace/{ns}/graph/echo", json=body).status_code == 201
        with browser_like(live) as b:
            section = _section(b.get("/").text, ns)
            cell = served_by(section, "Echo")
            assert 'class="runtime live"' in cell and name in cell and f"pid {worker.popen.pid}" in cell

            worker.stop()  # a clean stop marks the runtime stopped at once
            section = _section(b.get("/").text, ns)
            cell = served_by(section, "Echo")
            assert "no live runtime" in cell and 'class="runtime live"' not in cell

            run_id = c.post(f"/v0/namespace/{ns}/graph/echo/trigger", json={"inputs": {"text": "x"}}).json()["run_id"]
            page = _wait_page(b, f"/ui/{ns}/run/{run_id}", "waiting for a runtime for node")
            assert "waiting for a runtime for node <code>Echo</code> (no live runtime serves it)" in page
            c.post(f"/v0/namespace/{ns}/run/{run_id}/cancel")


def _section(page: str, ns: str) -> str:
    found = re.search(rf'<section class="ns"><h2>{ns} .*?</section>', page, re.S)
    assert found, page
    return found.group(0)


def _wait_page(b: httpx.Client, path: str, needle: str, timeout: float = 30) -> str:
    """The page once it says `needle` (the run page reads the ledger at each request)."""
    deadline = time.monotonic() + timeout
    while True:
        text = b.get(path).text
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)
