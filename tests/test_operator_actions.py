"""Operator actions on real workers: manual_retry and cancel (PostgreSQL + Redis and the embedded default)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

from exo_celery import GraphNodeModel, NotFoundError, RetryPolicyModel, StateError, UnitesModel

from .support import Stack, run, uid
from .timing import (
    NS,
    _workers,
    by_identifier,
    ensure_worker,
    execution_ended,
    skipped_deliveries,
    stamps,
    wait_until,
)

NO_RETRY = RetryPolicyModel(max_retries=0)


def gated_unite_graph(m, name: str, tmp_path: Path, seconds: str) -> None:  # type: ignore[no-untyped-def]
    """split -> gate (fails unless its flag file exists) -> collect, uniting split (ALL_SUCCESS)."""
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": '["ok", "bad"]'}, next_nodes=["gate"]
                ),
                GraphNodeModel(
                    node_name="Gate",
                    identifier="gate",
                    inputs={
                        "item": "${{ split.outputs.item }}",
                        "flag": f"{tmp_path}/flag-${{{{ split.outputs.item }}}}",
                        "seconds": seconds,
                    },
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ gate.outputs.item }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
            retry_policy=NO_RETRY,
        )
    )


def test_manual_retry_reopens_the_run_and_the_retried_branch_unites_again(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    gated_unite_graph(m, name, tmp_path, seconds="1.0")
    (tmp_path / "flag-ok").touch()
    run_id = run(m.trigger(name))["run_id"]
    failed = run(m.wait(run_id, timeout=60))
    assert failed["status"] == "FAILED"
    by = by_identifier(run(m.list_states(run_id)))
    assert "collect" not in by  # ALL_SUCCESS is blocked by the error
    (bad,) = [s for s in by["gate"] if s["status"] == "ERRORED"]
    assert bad["error"] == "RuntimeError: gate bad is closed"

    (tmp_path / "flag-bad").touch()
    retry = run(m.manual_retry(bad["id"]))
    again = run(m.manual_retry(bad["id"]))
    assert again["state_id"] == retry["state_id"]  # idempotent: one retry per state
    assert retry["retry_of"] == bad["id"] and retry["retry_count"] == 1
    reopened = run(m.get_run(run_id))
    assert reopened["status"] == "RUNNING" and reopened["finished_at"] is None  # the retry sleeps 1 s

    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "SUCCESS"
    by = by_identifier(run(m.list_states(run_id)))
    gates = {s["id"]: s for s in by["gate"]}
    assert gates[bad["id"]]["status"] == "RETRY_CREATED"
    assert gates[retry["state_id"]]["status"] == "SUCCESS"
    assert gates[retry["state_id"]]["retry_of"] == bad["id"]
    assert len(gates) == 3
    (collect,) = by["collect"]
    assert json.loads(collect["outputs"]["values"]) == ["ok", "bad"]  # fan-out order, both branches
    # Retrying again after success still returns the same retry, and creates nothing.
    assert run(m.manual_retry(bad["id"]))["state_id"] == retry["state_id"]
    assert len(run(m.list_states(run_id))) == len(by["split"]) + 3 + 1


def test_manual_retry_refuses_states_that_did_not_fail(stack: Stack) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={}))
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    (state,) = run(m.list_states(run_id))
    with pytest.raises(StateError, match="SUCCESS"):
        run(m.manual_retry(state["id"]))
    with pytest.raises(NotFoundError):
        run(m.manual_retry("0" * 32))
    assert run(m.get_run(run_id))["status"] == "SUCCESS"


def test_cancel_stops_pending_states_and_running_ones_without_children(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    sleeps, counts = tmp_path / "sleep", tmp_path / "count"
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": '["1", "2", "3", "4"]'}, next_nodes=["s"]
                ),
                GraphNodeModel(
                    node_name="Sleep", identifier="s", inputs={"seconds": "1.5", "path": str(sleeps)}, next_nodes=["c"]
                ),
                GraphNodeModel(
                    node_name="Count", identifier="c", inputs={"item": "${{ split.outputs.item }}", "path": str(counts)}
                ),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    wait_until(lambda: stamps(sleeps, column=1), timeout=30, what="a Sleep state to start")
    cancelled = run(m.cancel(run_id))
    assert cancelled["status"] == "CANCELLED" and cancelled["finished_at"] is not None

    # The worker (concurrency 2) was running at most two Sleep states; the others never start,
    # and the running ones are stopped (their worker says so) without creating their Count children.
    wait_until(
        lambda: all(s["status"] not in {"CREATED", "QUEUED"} for s in run(m.list_states(run_id))),
        timeout=10,
        what="no state waiting",
    )
    # Once the run is cancelled nothing more can be claimed: the states claimed so far are all that ever ran.
    # Wait until the worker says how each of those executions ended; only then can nothing change any more.
    by = by_identifier(run(m.list_states(run_id)))
    worker = _workers[id(stack)]
    for sid in [s["id"] for s in by["s"] if s["attempts"] > 0]:
        wait_until(lambda sid=sid: execution_ended(worker, sid), timeout=10, what=f"the execution of {sid} to end")
    assert 1 <= len(stamps(sleeps, column=1)) <= 2
    assert not counts.exists()
    by = by_identifier(run(m.list_states(run_id)))
    assert "c" not in by
    assert len(by["s"]) == 4
    assert all(s["status"] in {"CANCELLED", "SUCCESS"} for s in by["s"]), by["s"]
    assert sum(s["status"] == "CANCELLED" for s in by["s"]) >= 2
    for sid in [s["id"] for s in by["s"] if s["attempts"] > 0 and s["status"] == "CANCELLED"]:
        assert f"state {sid}: cancelled" in worker.text(), f"the node of {sid} was not stopped"
    final = run(m.get_run(run_id))
    assert final["status"] == "CANCELLED"
    # Cancelling again changes nothing; a cancelled run's states cannot be retried.
    assert run(m.cancel(run_id))["status"] == "CANCELLED"
    with pytest.raises(StateError):
        run(m.manual_retry(by["s"][0]["id"]))


def test_cancel_of_a_delayed_run_before_it_starts(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    path, later_path = tmp_path / "stamps", tmp_path / "later"
    for graph, stamped in ((name, path), (f"{name}-later", later_path)):
        node = GraphNodeModel(node_name="Stamp", identifier="s", inputs={"path": str(stamped), "tag": "late"})
        run(m.upsert_graph(graph, [node], secrets={}))
    worker = _workers[id(stack)]
    skipped = skipped_deliveries(worker, "Stamp")
    run_id = run(m.trigger(name, start_delay=1500))["run_id"]
    assert run(m.get_run(run_id))["status"] == "PENDING"
    assert run(m.cancel(run_id))["status"] == "CANCELLED"
    assert [s["status"] for s in run(m.list_states(run_id))] == ["CANCELLED"]
    # A run of the same node due a second later: once it has run, the worker has had the cancelled root's
    # message (due first) and dropped it.
    later = run(m.trigger(f"{name}-later", start_delay=2500))["run_id"]
    assert run(m.wait(later, timeout=60))["status"] == "SUCCESS" and later_path.exists()
    wait_until(lambda: skipped_deliveries(worker, "Stamp") > skipped, timeout=10, what="the message to be dropped")
    assert not path.exists()
    assert run(m.get_run(run_id))["status"] == "CANCELLED"


def test_cancel_of_a_finished_run_changes_nothing(stack: Stack) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={}))
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    assert run(m.cancel(run_id))["status"] == "SUCCESS"
    assert [s["status"] for s in run(m.list_states(run_id))] == ["SUCCESS"]


def stamp_node(identifier: str, path: Path, next_nodes: list[str] | None = None) -> GraphNodeModel:
    return GraphNodeModel(
        node_name="Stamp", identifier=identifier, inputs={"path": str(path), "tag": identifier}, next_nodes=next_nodes
    )


def test_cancel_racing_a_completing_state_leaves_nothing_running(pg_stack: Stack, tmp_path: Path) -> None:
    """Deterministic replay of the race: the test holds the run row's lock so that a completing state's
    transaction (children already inserted) is still open when cancel() runs; then lets both finish."""
    ensure_worker(pg_stack)
    m = pg_stack.manager(NS)
    name = uid()
    a, d = tmp_path / "a", tmp_path / "d"
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Sleep", identifier="a", inputs={"seconds": "1.5", "path": str(a)}, next_nodes=["b", "c"]
                ),
                stamp_node("b", tmp_path / "bc", ["d1"]),
                stamp_node("c", tmp_path / "bc", ["d2"]),
                stamp_node("d1", d),
                stamp_node("d2", d),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    wait_until(lambda: stamps(a, column=1), timeout=30, what="state a to start")
    assert pg_stack.database_url is not None
    waiting_sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with psycopg.connect(pg_stack.database_url) as lock, psycopg.connect(pg_stack.database_url, autocommit=True) as mon:

        def waiters() -> int:
            row = mon.execute(waiting_sql).fetchone()
            return int(row[0]) if row else 0

        lock.execute("SELECT id FROM exo_runs WHERE id = %s FOR UPDATE", (run_id,))
        wait_until(lambda: waiters() >= 1, timeout=10, what="a's completion to wait for the run row")
        result: dict[str, object] = {}
        canceller = threading.Thread(target=lambda: result.update(run=m.cancel_sync(run_id)))
        canceller.start()
        wait_until(lambda: waiters() >= 2, timeout=10, what="cancel to wait too")
        lock.rollback()
        canceller.join(timeout=30)
    assert result["run"]["status"] == "CANCELLED"  # type: ignore[index]
    # Nothing can be claimed once the cancel committed: wait until every execution claimed before it ended.
    worker = _workers[id(pg_stack)]
    for s in run(m.list_states(run_id)):
        if s["attempts"] > 0:
            sid = s["id"]
            wait_until(lambda sid=sid: execution_ended(worker, sid), timeout=30, what=f"the execution of {sid} to end")
    states = run(m.list_states(run_id))
    assert all(s["status"] not in {"CREATED", "QUEUED"} for s in states), [
        (s["identifier"], s["status"]) for s in states
    ]
    # b and c may have been claimed just before the cancel committed (then they are "running" and must end
    # without children); their children d1, d2 must never run.
    assert not d.exists(), f"states ran in the cancelled run: {d.read_text()}"
    assert run(m.get_run(run_id))["status"] == "CANCELLED"


# -- cancel stops what is executing (docs/execution.md, "Cancel") ---------------------------------------
NODE_SECONDS = 3.0


def cancel_while_executing(stack: Stack, tmp_path: Path, node: str, pool: str, prompt: bool = True) -> None:
    """Start `node` (it notes `started`, waits NODE_SECONDS, notes `done`) on a worker with ONE slot, cancel
    its run, and check that the node never gets to `done` and (if `prompt`) that the slot runs the next
    state before the node would have finished."""
    namespace = "exec"
    argv = ["worker", "--namespace", namespace, "--nodes", "tests.execution_nodes:NODES", "--name", uid("c")]
    worker = stack._spawn([*argv, "--pool", pool, "--concurrency", "1"], f"worker-cancel-{pool}", None)
    try:
        worker.wait_for(" ready.")
        m = stack.manager(namespace)
        started, done, touched = tmp_path / "started", tmp_path / "done", tmp_path / "touched"
        name, touch = uid(), uid()
        inputs = {"seconds": str(NODE_SECONDS), "started": str(started), "done": str(done)}
        run(m.upsert_graph(name, [GraphNodeModel(node_name=node, identifier="n", inputs=inputs)], secrets={}))
        touch_node = GraphNodeModel(node_name="Touch", identifier="t", inputs={"path": str(touched)})
        run(m.upsert_graph(touch, [touch_node], secrets={}))
        run_id = run(m.trigger(name))["run_id"]
        began = wait_until(lambda: stamps(started, column=1), timeout=30, what="the node to start")[0]
        assert run(m.cancel(run_id))["status"] == "CANCELLED"
        (state,) = run(m.list_states(run_id))
        assert state["status"] == "CANCELLED"
        wait_until(lambda: f"state {state['id']}: cancelled" in worker.text(), timeout=10, what="the node stopped")

        # The one slot is free again: the next state runs (promptly, unless the pool cannot interrupt).
        assert run(m.wait(run(m.trigger(touch))["run_id"], timeout=30))["status"] == "SUCCESS"
        (touched_at,) = stamps(touched)
        if prompt:
            assert touched_at < began + NODE_SECONDS, "the slot was not freed before the node's own end"
        # Past the time the node would have noted `done` (a bare wait is the only way to see "never"):
        time.sleep(max(0.0, began + NODE_SECONDS + 1.0 - time.time()))
        assert not done.exists(), "the cancelled node kept running"
        assert "already recorded by another delivery" not in worker.text()
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("node", "pool"),
    [("AsyncWait", "prefork"), ("SyncWait", "prefork"), ("SyncWait", "solo"), ("SyncSteps", "threads")],
)
def test_cancel_stops_an_executing_node(pg_stack: Stack, tmp_path: Path, node: str, pool: str) -> None:
    cancel_while_executing(pg_stack, tmp_path, node, pool)


def test_cancel_stops_an_executing_async_node_on_the_default_pool(stack: Stack, tmp_path: Path) -> None:
    cancel_while_executing(stack, tmp_path, "AsyncWait", "threads")


def test_cancel_discards_a_sync_node_blocked_in_a_thread_when_its_call_returns(
    pg_stack: Stack, tmp_path: Path
) -> None:
    """Under `threads`, a sync node blocked in one long C call (time.sleep) is stopped when the call returns,
    before its next Python instruction: it never notes `done`, but its slot is busy until then."""
    cancel_while_executing(pg_stack, tmp_path, "SyncWait", "threads", prompt=False)
