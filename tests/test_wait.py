"""`wait` learns of a run's end by notification (PostgreSQL LISTEN/NOTIFY; embedded: change checks).

Waits here use a fallback poll of 60 s and a timeout of 30 s: one that returns was woken by the
notification, not by its poll. The fallback itself is tested by losing every notification.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
import pytest

from exo_celery import GraphNodeModel
from exo_celery.ledger import notify
from exo_celery.ledger.repo import Repo
from exo_celery.node import node_schema

from . import nodes
from .conftest import SHARED_NAMESPACE as NS
from .support import Stack, run, uid

NEVER = 60.0  # a fallback poll that never comes within a test's timeout


def _sleep_graph(m, tmp_path: Path, seconds: str = "0.5") -> str:  # type: ignore[no-untyped-def]
    name = uid()
    path = str(tmp_path / f"{name}.log")
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Sleep", identifier="s", inputs={"seconds": seconds, "path": path}, next_nodes=["e"]
                ),
                GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "${{ s.outputs.slept }}"}),
            ],
            secrets={},
        )
    )
    return name


def _unserved_run(stack: Stack) -> tuple[object, str]:
    """A run in a namespace no worker serves: it stays PENDING until cancelled."""
    ns = uid("nobody")
    Repo(stack.settings().ledger_url).register_nodes(ns, {"Echo": node_schema(nodes.Echo)}, "test")
    m = stack.manager(ns)
    name = uid()
    run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "x"})], secrets={}))
    return m, run(m.trigger(name))["run_id"]


def _listeners(url: str) -> list[int]:
    """Backend pids LISTENing on the run-end channel in the test database (only this process listens)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
            (f"LISTEN {notify.CHANNEL}",),
        ).fetchall()
    return [r[0] for r in rows]


def _until(check, what: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll `check()` until it is truthy (test synchronisation, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen after {timeout} s")


def _subscribed(m, run_id: str) -> None:  # type: ignore[no-untyped-def]
    _until(lambda: run_id in notify.hub(m.settings.ledger_url).run_ids(), f"a waiter of {run_id}")


def test_wait_is_woken_when_the_run_ends(stack: Stack, tmp_path: Path) -> None:
    m = stack.manager(NS)
    name = _sleep_graph(m, tmp_path)
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=30, poll_interval=NEVER))
    assert done["status"] == "SUCCESS"
    assert done["counts"] == {"SUCCESS": 2}
    assert done["finished_at"] is not None
    again = m.wait_sync(run(m.trigger(name))["run_id"], timeout=30, poll_interval=NEVER)
    assert again["status"] == "SUCCESS"


def test_many_waiters_share_one_listening_connection(pg_stack: Stack, tmp_path: Path) -> None:
    m = pg_stack.manager(NS)
    name = _sleep_graph(m, tmp_path, seconds="1")
    run_ids = [run(m.trigger(name))["run_id"] for _ in range(5)]
    seen: list[int] = []

    async def waiters() -> list[dict]:  # type: ignore[type-arg]
        tasks = [asyncio.create_task(m.wait(r, timeout=30, poll_interval=NEVER)) for r in run_ids for _ in range(4)]
        hub = notify.hub(m.settings.ledger_url)
        while not set(run_ids) <= set(hub.run_ids()):  # every run has a waiter (the first run sleeps 1 s)
            await asyncio.sleep(0.02)
        seen.extend(_listeners(pg_stack.database_url or ""))
        return await asyncio.gather(*tasks)

    results = run(waiters())
    assert len(results) == 20 and {r["status"] for r in results} == {"SUCCESS"}
    assert len(seen) == 1  # 20 waiters, one LISTEN connection


def test_cancel_wakes_the_waiter(stack: Stack) -> None:
    m, run_id = _unserved_run(stack)
    result: dict = {}  # type: ignore[type-arg]

    def waiter() -> None:
        result.update(m.wait_sync(run_id, timeout=30, poll_interval=NEVER))  # type: ignore[attr-defined]

    thread = threading.Thread(target=waiter)
    thread.start()
    _subscribed(m, run_id)
    run(m.cancel(run_id))  # type: ignore[attr-defined]
    thread.join(35)
    assert result["status"] == "CANCELLED"


def test_wait_times_out_on_a_run_that_does_not_end(stack: Stack) -> None:
    m, run_id = _unserved_run(stack)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"run {run_id} is still PENDING after 0.5 s"):
        run(m.wait(run_id, timeout=0.5))  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError, match="PENDING"):
        m.wait_sync(run_id, timeout=0.3)  # type: ignore[attr-defined]
    assert time.monotonic() - started < 20  # it gave up; it did not hang
    run(m.cancel(run_id))  # type: ignore[attr-defined]


def test_lost_notifications_fall_back_to_polling(
    pg_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process listens on a channel nobody notifies: every notification is lost.
    monkeypatch.setattr(notify, "CHANNEL", "exo_nobody_notifies")
    url = (pg_stack.database_url or "") + "?application_name=exo_wait_lost"  # a listener of its own
    m = pg_stack.manager(NS, database_url=url)
    name = _sleep_graph(m, tmp_path, seconds="0.2")
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=30, poll_interval=0.3))["status"] == "SUCCESS"
    # The injection works: without the poll nothing wakes a waiter before its deadline (it then
    # reads the run once more and finds it ended). A lower bound, which load cannot break.
    started = time.monotonic()
    assert run(m.wait(run(m.trigger(name))["run_id"], timeout=3, poll_interval=NEVER))["status"] == "SUCCESS"
    assert time.monotonic() - started >= 2.9


def test_a_dropped_listener_reconnects_and_wakes_its_waiters(pg_stack: Stack, tmp_path: Path) -> None:
    m = pg_stack.manager(NS)
    name = _sleep_graph(m, tmp_path, seconds="1")
    run_id = run(m.trigger(name))["run_id"]
    result: dict = {}  # type: ignore[type-arg]
    thread = threading.Thread(target=lambda: result.update(m.wait_sync(run_id, timeout=30, poll_interval=NEVER)))
    thread.start()
    _subscribed(m, run_id)
    pids = _until(lambda: _listeners(pg_stack.database_url or ""), "the listener")
    with psycopg.connect(pg_stack.database_url or "", autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(35)
    assert result["status"] == "SUCCESS"
