"""A real Flower process shows each executed state as `<prefix>.<namespace>.<NodeName>` with ids, never values,
and tells the truth: ERRORED is FAILURE, a retried attempt RETRY, PRUNED and requeued states say so in the result."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_celery import GraphNodeModel, UnitesModel

from .conftest import SHARED_NAMESPACE as NS
from .support import Stack, run, running_flower, uid

SECRET = "sk-flower-8d2c4a6e1f"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def flower(pg_stack: Stack) -> Iterator[str]:
    """`celery --broker=<the stack's broker> flower` on a free port; yields its base URL."""
    with running_flower(pg_stack, pg_stack.home / f"flower-{uuid.uuid4().hex[:6]}.log") as base:
        yield base


def flower_tasks(base: str) -> tuple[str, dict[str, dict[str, Any]]]:
    text = get(f"{base}/api/tasks?limit=5000")
    return text, json.loads(text)


def wait_for_tasks(base: str, state_ids: set[str], timeout: float = 30.0) -> tuple[str, dict[str, dict[str, Any]]]:
    """Poll Flower until a received task's args name every given state (events take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        text, tasks = flower_tasks(base)
        seen = {sid for sid in state_ids for t in tasks.values() if t.get("args") and f"state_id={sid!r}" in t["args"]}
        if seen == state_ids:
            return text, tasks
        if time.monotonic() > deadline:
            raise AssertionError(f"Flower never showed states {sorted(state_ids - seen)}")
        time.sleep(0.3)


def test_flower_shows_each_state_by_node_name_with_ids_and_no_values(pg_stack: Stack, flower: str) -> None:
    m = pg_stack.manager(NS)
    prefix = pg_stack.settings().queue_prefix

    warm_up(m, flower)

    marker = uuid.uuid4().hex[:12]
    items = [f"in-{marker}-1", f"in-{marker}-2"]
    name = uid("flower")
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Split", identifier="split", inputs={"items": "[]"}, next_nodes=["up"]),
                GraphNodeModel(
                    node_name="Upper", identifier="up", inputs={"item": "${{ split.outputs.item }}"}, next_nodes=["all"]
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="all",
                    inputs={"values": "${{ up.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                    next_nodes=["secret", "fail"],
                ),
                GraphNodeModel(node_name="UseSecret", identifier="secret", inputs={"mode": "leak-output"}),
                GraphNodeModel(node_name="Fail", identifier="fail", inputs={"text": "${{ all.outputs.values }}"}),
            ],
            secrets={"api_key": SECRET},
            retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50},
        )
    )
    run_id = run(m.trigger(name, inputs={"items": json.dumps(items)}))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "FAILED"  # `fail` fails (its error holds the values)
    states = run(m.list_states(run_id))
    executed = {s["id"]: s for s in states if s["attempts"] > 0}  # fan-out outputs 1..n-1 never run as tasks
    assert len(executed) == 7  # split, 2 up, all, secret, fail and its retry

    text, tasks = wait_for_tasks(flower, set(executed))
    for sid, state in executed.items():
        task = next(t for t in tasks.values() if t.get("args") and f"state_id={sid!r}" in t["args"])
        assert task["name"] == f"{prefix}.{NS}.{state['node_name']}"
        assert task["args"] == (
            f"(graph={name!r}, identifier={state['identifier']!r}, run_id={run_id!r}, state_id={sid!r})"
        )
        assert task["kwargs"] == "{}"
        assert task["routing_key"] in (None, f"{prefix}.{NS}.{state['node_name']}")

    # Flower tells the truth: `fail`'s first attempt is RETRY (its retry was created), the retry FAILURE,
    # both with the redacted error; the others SUCCESS with the state's status as the result.
    by_id = {s["identifier"]: [x for x in states if x["identifier"] == s["identifier"]] for s in states}
    first, second = sorted(by_id["fail"], key=lambda s: s["retry_count"])
    expected = {first["id"]: "RETRY", second["id"]: "FAILURE"}
    expected.update({sid: "SUCCESS" for sid in executed if sid not in expected})
    text, tasks = wait_for_states(flower, expected)
    for sid in (first["id"], second["id"]):
        (task,) = tasks_of(tasks, sid)
        assert "always fails" in task["exception"] and "StateErrored" in task["exception"]
    (ok,) = tasks_of(tasks, by_id["split"][0]["id"])
    assert ok["result"] == "{'status': 'SUCCESS'}"

    # No input, output or secret anywhere in what Flower holds for any task (the error texts are redacted).
    assert marker not in text and marker.upper() not in text
    assert SECRET not in text


def tasks_of(tasks: dict[str, dict[str, Any]], state_id: str) -> list[dict[str, Any]]:
    """Flower's tasks (one per delivery) of one state."""
    return [t for t in tasks.values() if t.get("args") and f"state_id={state_id!r}" in t["args"]]


def wait_for_states(
    base: str, expected: dict[str, str | set[str]], timeout: float = 30.0
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Poll Flower until every state's tasks are in the expected Celery states (a set: one task per state)."""
    deadline = time.monotonic() + timeout
    while True:
        text, tasks = flower_tasks(base)
        seen = {sid: {t["state"] for t in tasks_of(tasks, sid)} for sid in expected}
        want = {sid: v if isinstance(v, set) else {v} for sid, v in expected.items()}
        if seen == want:
            return text, tasks
        if time.monotonic() > deadline:
            raise AssertionError(f"Flower shows {seen}, expected {want}")
        time.sleep(0.3)


def test_flower_marks_pruned_and_requeued_states(pg_stack: Stack, flower: str, tmp_path: Path) -> None:
    m = pg_stack.manager(NS)
    warm_up(m, flower)
    name = uid("prune")
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": '["ok", "p1"]'}, next_nodes=["p"]
                ),
                GraphNodeModel(node_name="Prune", identifier="p", inputs={"item": "${{ split.outputs.item }}"}),
            ],
            secrets={},
        )
    )
    poll = uid("poll")
    inputs = {"path": str(tmp_path / "calls"), "times": "1", "delay_ms": "50"}
    run(m.upsert_graph(poll, [GraphNodeModel(node_name="Poll", identifier="poll", inputs=inputs)], secrets={}))
    pruned_run = run(m.trigger(name))["run_id"]
    poll_run = run(m.trigger(poll))["run_id"]
    assert run(m.wait(pruned_run, timeout=60))["status"] == "SUCCESS"
    assert run(m.wait(poll_run, timeout=60))["status"] == "SUCCESS"

    states = [s for s in run(m.list_states(pruned_run)) if s["identifier"] == "p"]
    ((polled,),) = [run(m.list_states(poll_run))]
    status = {s["id"]: s["status"] for s in states}
    assert sorted(status.values()) == ["PRUNED", "SUCCESS"]
    _, tasks = wait_for_states(flower, {**{sid: "SUCCESS" for sid in status}, polled["id"]: "SUCCESS"})
    for sid, st in status.items():
        (task,) = tasks_of(tasks, sid)
        assert task["result"] == f"{{'status': {st!r}}}"
    # The Poll state was delivered twice: first requeued (QUEUED again with a 0.05 s countdown), then done.
    wait_until_count = time.monotonic() + 30
    while len(tasks_of(tasks, polled["id"])) < 2 and time.monotonic() < wait_until_count:
        time.sleep(0.3)
        _, tasks = flower_tasks(flower)
    results = sorted(str(t["result"]) for t in tasks_of(tasks, polled["id"]))
    assert results == ["{'status': 'QUEUED', 'requeued_after': 0.05}", "{'status': 'SUCCESS'}"]


def warm_up(m: Any, flower: str) -> None:
    """Flower only records events sent after it connected: wait until a probe run shows up."""
    probe = uid("probe")
    run(m.upsert_graph(probe, [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "p"})], secrets={}))
    deadline = time.monotonic() + 30
    while True:
        probe_run = run(m.trigger(probe))["run_id"]
        run(m.wait(probe_run, timeout=30))
        probe_state = run(m.list_states(probe_run))[0]["id"]
        try:
            wait_for_tasks(flower, {probe_state}, timeout=3)
            return
        except AssertionError:
            assert time.monotonic() < deadline, "Flower received no task events"
