"""Worker logs: one line per state transition with its ids, never a secret or an input value."""

from __future__ import annotations

import re
import time
import uuid

from exo_celery import GraphNodeModel

from .conftest import SHARED_NAMESPACE as NS
from .support import Proc, Stack, run, uid

SECRET = "sk-logs-3b9e7d1c5a"
LINE = re.compile(r"run=(\w+) state=(\w+) graph=(\S+) identifier=(\S+) status=([A-Z_]+)")


def shared_worker(stack: Stack) -> Proc:
    return next(p for p in stack.procs if p.log.name.startswith(f"worker-{NS}-"))


def transitions(worker: Proc, run_id: str, expected: int) -> list[tuple[str, ...]]:
    """The worker's transition lines of one run (waits briefly: the last line follows the ledger commit)."""
    deadline = time.monotonic() + 10
    while True:
        found = [m.groups() for m in LINE.finditer(worker.text()) if m.group(1) == run_id]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def failing_run(stack: Stack, text: str) -> tuple[str, str, list[dict]]:  # type: ignore[type-arg]
    m = stack.manager(NS)
    name = uid("logs")
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Echo", identifier="echo", inputs={"text": "x"}, next_nodes=["key", "fail"]),
                GraphNodeModel(node_name="UseSecret", identifier="key", inputs={"mode": "leak-error"}),
                GraphNodeModel(node_name="Fail", identifier="fail", inputs={"text": "${{ echo.outputs.text }}"}),
            ],
            secrets={"api_key": SECRET},
            retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50},
        )
    )
    run_id = run(m.trigger(name, inputs={"text": text}))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "FAILED"
    return name, run_id, run(m.list_states(run_id))


def test_each_execution_logs_running_then_its_outcome_with_run_state_graph_and_identifier(pg_stack: Stack) -> None:
    marker = f"in-{uuid.uuid4().hex[:10]}"
    name, run_id, states = failing_run(pg_stack, marker)
    assert len(states) == 5  # echo, key and its retry, fail and its retry
    found = transitions(shared_worker(pg_stack), run_id, 3 * len(states) - 1)
    by_state: dict[str, list[str]] = {}
    for _, state_id, graph, identifier, status in found:
        state = next(s for s in states if s["id"] == state_id)
        assert (graph, identifier) == (name, state["identifier"])
        by_state.setdefault(state_id, []).append(status)
    assert set(by_state) == {s["id"] for s in states}
    for state in states:
        logged = by_state[state["id"]]
        if state["identifier"] != "echo":  # created by its parent's worker, then executed
            assert logged[0] == "QUEUED", logged
            logged = logged[1:]
        assert logged == ["RUNNING", state["status"]], (state["status"], logged)

    # The secret the node put in its error is masked; the input given to the run is never logged.
    text = shared_worker(pg_stack).text()
    assert SECRET not in text
    key_lines = [line for line in text.splitlines() if "identifier=key" in line and run_id in line and "error=" in line]
    assert key_lines and all("***" in line for line in key_lines)
    assert marker not in "\n".join(line for line in text.splitlines() if "identifier=fail" not in line)


def test_an_input_value_inside_an_error_text_is_not_logged(pg_stack: Stack) -> None:
    marker = f"in-{uuid.uuid4().hex[:10]}"
    _, run_id, states = failing_run(pg_stack, marker)
    transitions(shared_worker(pg_stack), run_id, 3 * len(states) - 1)
    assert marker not in shared_worker(pg_stack).text()


def test_an_error_outcome_logs_the_status_the_ledger_recorded(pg_stack: Stack) -> None:
    _, run_id, states = failing_run(pg_stack, "plain")
    found = transitions(shared_worker(pg_stack), run_id, 3 * len(states) - 1)
    last = {state_id: status for _, state_id, _, _, status in found}
    assert {s["id"]: s["status"] for s in states} == last
