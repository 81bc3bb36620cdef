"""Scenario 6 (worker side): node outputs of the wrong type or too large, and values the ledger cannot hold.

A bad return value must end its state ERRORED with a clear error (no retry: running it again cannot
help), the run must end, and the worker must stay alive and keep serving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from exo_celery import GraphNodeModel

from ..support import Proc, Stack, run, uid
from .harness import Figures, Ledger, scan_secrets, start_workers, upsert

MODES = {
    "big": "over the limit of 1048576 (EXO_MAX_OUTPUT_BYTES)",
    "many": "over the limit of 1048576 (EXO_MAX_OUTPUT_BYTES)",
    "type": "Bad.execute returned str as the value; expected Bad.Outputs",
    "list-of-junk": "returned int as item 1 of the list",
    "dict-missing": "Field required",
}
# Probes of values the ledger cannot store: each run must still end (lease 3 s, sweep 1 s, no retries).
PROBES = {
    "control": GraphNodeModel(node_name="Parse", identifier="p", inputs={"text": "x"}),
    "nul-error": GraphNodeModel(node_name="Parse", identifier="p", inputs={"text": "1\x002"}),
    "nul-store": GraphNodeModel(node_name="StoreRaw", identifier="s", inputs={"key": "k", "codepoints": "97,0,98"}),
    "prune-datetime": GraphNodeModel(node_name="PruneWithTime", identifier="p", inputs={"text": "t"}),
}
PROBE_WAIT = 8.0


@dataclass
class Setup:
    stack: Stack
    ns: str
    small_ns: str
    worker: Proc
    probes: dict[str, str]
    started: float


@pytest.fixture(scope="module")
def setup(module_fstack: Stack) -> Setup:
    """A worker (1 MiB limit), a worker with a 5000-byte limit, a beat; the probe runs triggered at once."""
    ns, small_ns = uid("bad"), uid("lim")
    stack = module_fstack
    worker = stack.start_worker(ns, "tests.faults.nodes:NODES", concurrency=2, wait=False)
    start_workers(stack, small_ns, 1, env={"EXO_MAX_OUTPUT_BYTES": "5000"})
    worker.wait_for(" ready.")
    stack.start_beat()
    m = stack.manager(ns)
    probes = {}
    for label, node in PROBES.items():
        upsert(stack, ns, f"probe-{label}", [node], retry_policy={"max_retries": 0})
        probes[label] = run(m.trigger(f"probe-{label}"))["run_id"]
    return Setup(stack, ns, small_ns, worker, probes, time.monotonic())


def test_wrong_and_oversized_outputs_fail_clearly_and_worker_keeps_serving(setup: Setup, figures: Figures) -> None:
    stack, ns = setup.stack, setup.ns
    m = stack.manager(ns)
    run_ids = {}
    for mode in MODES:
        upsert(stack, ns, f"bad-{mode}", [GraphNodeModel(node_name="Bad", identifier="bad", inputs={"mode": mode})])
        run_ids[mode] = run(m.trigger(f"bad-{mode}"))["run_id"]
    for mode, expected in MODES.items():
        done = run(m.wait(run_ids[mode], timeout=60))
        assert done["status"] == "FAILED", (mode, done)
        (state,) = run(m.list_states(run_ids[mode]))
        assert state["status"] == "ERRORED" and state["retry_count"] == 0, (mode, state)
        assert expected in state["error"], (mode, state["error"])
        assert len(state["error"]) < 2000, "the error names the problem, it does not echo 2 MB of output"
        assert state["outputs"] is None
    assert setup.worker.popen.poll() is None, "the worker died"
    # Still serving, and an output just under the limit is fine.
    upsert(stack, ns, "ok", [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x" * 1_000_000})])
    assert run(m.wait(run(m.trigger("ok"))["run_id"], timeout=60))["status"] == "SUCCESS"
    assert setup.worker.popen.poll() is None
    ledger = Ledger(stack.database_url or "")
    huge = ledger.value("SELECT count(*) FROM exo_states WHERE length(coalesce(outputs::text, '')) > 1100000")
    assert huge == 0, "no oversized output reached the ledger"
    figures.record(
        "6-bad-outputs",
        runs=len(MODES) + 1,
        bad_outputs=len(MODES),
        runs_failed_clearly=len(MODES),
        worker_crashes=0,
        retries_of_bad_outputs=0,
    )


def test_output_limit_follows_the_setting(setup: Setup) -> None:
    stack, ns = setup.stack, setup.small_ns
    m = stack.manager(ns)
    upsert(stack, ns, "small", [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x" * 4000})])
    upsert(stack, ns, "large", [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x" * 6000})])
    small, large = (run(m.trigger(g))["run_id"] for g in ("small", "large"))
    assert run(m.wait(small, timeout=60))["status"] == "SUCCESS"
    assert run(m.wait(large, timeout=60))["status"] == "FAILED"
    (state,) = run(m.list_states(large))
    assert "over the limit of 5000 (EXO_MAX_OUTPUT_BYTES)" in state["error"]


def _probe(setup: Setup, label: str) -> tuple[str, list[dict]]:
    """The probe run's status once it ended, or STILL-RUNNING PROBE_WAIT s after it was triggered."""
    m = setup.stack.manager(setup.ns)
    run_id = setup.probes[label]
    left = max(0.5, PROBE_WAIT - (time.monotonic() - setup.started))
    try:
        status = run(m.wait(run_id, timeout=left))["status"]
    except TimeoutError:
        status = "STILL-RUNNING"
    return status, run(m.list_states(run_id))


def test_a_failing_node_ends_its_run_at_once(setup: Setup) -> None:
    """The control for the probes below: the same kind of failure, storable, ends the run at once."""
    status, states = _probe(setup, "control")
    assert status == "FAILED" and states[0]["status"] == "ERRORED", states
    assert "cannot parse 'x'" in states[0]["error"]


def test_error_text_with_a_nul_byte_ends_the_run(setup: Setup) -> None:
    status, states = _probe(setup, "nul-error")
    assert status == "FAILED", states


def test_store_value_with_a_nul_byte_ends_the_run(setup: Setup) -> None:
    status, states = _probe(setup, "nul-store")
    assert status in {"SUCCESS", "FAILED"}, states


def test_prune_data_that_is_not_json_ends_the_run(setup: Setup) -> None:
    status, states = _probe(setup, "prune-datetime")
    assert status in {"SUCCESS", "FAILED"}, states


def test_the_worker_survived_the_probes(setup: Setup) -> None:
    """Whatever the probes did, the worker process is alive and still serving."""
    for label in PROBES:
        _probe(setup, label)
    assert setup.worker.popen.poll() is None
    m = setup.stack.manager(setup.ns)
    upsert(setup.stack, setup.ns, "after", [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "y"})])
    after = run(m.trigger("after"))["run_id"]
    assert run(m.wait(after, timeout=30))["status"] == "SUCCESS"
    scan = scan_secrets(setup.stack, run_ids=[after, *setup.probes.values()], namespace=setup.ns)
    assert not scan.found, f"the secret leaked into {scan.found}"
