"""Scenario 8: namespace isolation. Two namespaces with the same node names, one worker each.

Every state must be executed by the worker serving its own namespace (each node reports the process group
that ran it: the worker's main pid), including a graph whose nodes live in both namespaces. A message
sent to the wrong queue must not make a worker run another namespace's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from exo_celery import GraphNodeModel, NotFoundError
from exo_celery.celery_app import make_app

from ..support import ROOT, Proc, Stack, run, uid
from .harness import Figures, Ledger, register, scan_secrets, soak, upsert


@dataclass
class Two:
    stack: Stack
    ns: tuple[str, str]
    workers: dict[str, Proc]


@pytest.fixture(scope="module")
def two(module_fstack: Stack) -> Two:
    stack = module_fstack
    ns = (uid("iso-a"), uid("iso-b"))
    for n in ns:
        register(stack, n)
    procs = {n: stack.start_worker(n, "tests.faults.nodes:NODES", concurrency=2, wait=False) for n in ns}
    for p in procs.values():
        p.wait_for(" ready.")
    return Two(stack, ns, procs)


def _graph(own: str, other: str) -> list[GraphNodeModel]:
    """Echo in this namespace -> Echo in the other one -> Echo back in this one (same node names everywhere)."""
    return [
        GraphNodeModel(node_name="Echo", identifier="here", inputs={"text": own}, next_nodes=["there"]),
        GraphNodeModel(
            node_name="Echo",
            namespace=other,
            identifier="there",
            inputs={"text": "${{ here.outputs.text }}"},
            next_nodes=["back"],
        ),
        GraphNodeModel(node_name="Echo", identifier="back", inputs={"text": "${{ there.outputs.text }}"}),
    ]


def test_each_state_runs_on_a_worker_of_its_namespace(two: Two, figures: Figures) -> None:
    a, b = two.ns
    run_ids = []
    for own, other in ((a, b), (b, a)):
        upsert(two.stack, own, "cross", _graph(own, other))
        m = two.stack.manager(own)
        run_ids += [run(m.trigger("cross"))["run_id"] for _ in range(soak(3))]
    ledger = Ledger(two.stack.database_url or "")
    assert set(ledger.wait_runs(run_ids, timeout=60).values()) == {"SUCCESS"}
    rows = ledger.rows(
        "SELECT namespace, outputs->>'pgid', graph_namespace FROM exo_states WHERE run_id = ANY(%s)", (run_ids,)
    )
    owner = {str(p.popen.pid): n for n, p in two.workers.items()}
    wrong = [(ns, owner.get(pgid, pgid)) for ns, pgid, _ in rows if owner.get(pgid) != ns]
    figures.record(
        "8-namespace-isolation",
        namespaces=2,
        runs=len(run_ids),
        states=len(rows),
        states_in_another_namespace_than_their_graph=sum(1 for ns, _, graph_ns in rows if ns != graph_ns),
        states_run_by_another_namespace_worker=len(wrong),
    )
    assert len(rows) == 3 * len(run_ids)
    assert not wrong, wrong
    scan = scan_secrets(two.stack, run_ids=run_ids, namespace=a)
    assert not scan.found, f"the secret leaked into {scan.found}"


def test_a_misrouted_message_does_not_run_another_namespaces_state(two: Two, module_fstack: Stack) -> None:
    a, b = two.ns
    stack = two.stack
    upsert(stack, b, "solo", [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "b"})])
    two.workers[b].kill()  # b's state stays QUEUED: nobody serves b for now
    two.workers[b].popen.wait(timeout=10)
    run_id = run(stack.manager(b).trigger("solo"))["run_id"]
    state_id = Ledger(stack.database_url or "").value("SELECT id FROM exo_states WHERE run_id = %s", (run_id,))
    settings = stack.settings()
    # The same node name exists in a: a message under a's task name, on a's queue, naming b's state.
    make_app(settings).send_task(
        f"{settings.queue_prefix}.{a}.Echo", args=[state_id, run_id], queue=f"{settings.queue_prefix}.{a}.Echo"
    )
    two.workers[b] = stack.start_worker(b, "tests.faults.nodes:NODES", concurrency=2)
    ledger = Ledger(stack.database_url or "")
    assert ledger.wait_runs([run_id], timeout=30)[run_id] == "SUCCESS"
    pgid = ledger.value("SELECT outputs->>'pgid' FROM exo_states WHERE id = %s", (state_id,))
    assert pgid == str(two.workers[b].popen.pid), "b's state was run by a's worker"


def test_a_client_sees_another_namespaces_runs_and_states_as_not_found(two: Two) -> None:
    """Issue 13, item 1: only list_runs used to filter; get_run, list_states, cancel, manual_retry and
    `exo-celery show` now treat another namespace's ids as unknown, and change nothing there."""
    a, b = two.ns
    stack = two.stack
    register(stack, b)
    fails = [GraphNodeModel(node_name="Parse", identifier="p", inputs={"text": "not a number"})]
    run(stack.manager(b).upsert_graph("fails", fails, secrets={}, retry_policy={"max_retries": 0}))
    slow = [
        GraphNodeModel(node_name="Hold", identifier="h", inputs={"item": "x", "path": "/dev/null", "seconds": "30"})
    ]
    run(stack.manager(b).upsert_graph("slow", slow, secrets={}))
    mb, ma = stack.manager(b), stack.manager(a)
    failed = run(mb.trigger("fails"))["run_id"]
    ledger = Ledger(stack.database_url or "")
    assert ledger.wait_runs([failed], timeout=60)[failed] == "FAILED"
    running = run(mb.trigger("slow"))["run_id"]
    errored = ledger.value("SELECT id FROM exo_states WHERE run_id = %s", (failed,))
    before = ledger.rows("SELECT id, status FROM exo_states WHERE run_id = ANY(%s) ORDER BY id", ([failed, running],))

    for call in (
        lambda: ma.get_run(failed),
        lambda: ma.list_states(failed),
        lambda: ma.cancel(running),
        lambda: ma.manual_retry(errored),
        lambda: ma.wait(failed, timeout=1),
    ):
        with pytest.raises(NotFoundError, match="does not exist in namespace"):
            run(call())
    assert ledger.run_status(running) in {"PENDING", "RUNNING"}, "a's client cancelled b's run"
    after = ledger.rows("SELECT id, status FROM exo_states WHERE run_id = ANY(%s) ORDER BY id", ([failed, running],))
    assert after == before, "a's client changed b's states (a retry or a cancel)"
    assert [r["run_id"] for r in run(ma.list_runs())].count(failed) == 0

    shown = _cli(stack, ["--namespace", a, "--json", "show", failed])
    # With --json the error is JSON on stdout: it names the id asked for, and shows nothing of the run.
    error = json.loads(shown.stdout)
    assert shown.returncode == 1 and set(error) == {"error", "type"}, shown.stdout
    assert error["type"] == "NotFoundError" and "does not exist in namespace" in error["error"], error
    # b's own client still sees and acts on them.
    assert run(mb.get_run(failed))["status"] == "FAILED"
    assert run(mb.manual_retry(errored))["retry_of"] == errored
    assert run(mb.cancel(running))["status"] == "CANCELLED"


def _cli(stack: Stack, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", *argv],
        cwd=ROOT,
        env={**stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
