"""Signals and retry policies on real workers (PostgreSQL + Redis and the embedded default).

PruneSignal, graph-level retry policies (budget, backoff timing, max_delay, no retry of
invalid inputs), ReQueueAfterSignal polling, and `start_delay` — all through delays short
enough to travel as Celery countdowns (the ledger path is in test_time_and_beat.py).
"""

from __future__ import annotations

import json
import time
from itertools import pairwise
from pathlib import Path

from exo_celery import GraphNodeModel, RetryPolicyModel, RetryStrategyEnum, UnitesModel

from .support import Stack, run, uid
from .timing import NS, by_identifier, ensure_worker, report_lateness, stamps, wait_until

FAST_RETRY = RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=100)


def test_prune_records_data_has_no_children_and_counts_as_fine_for_all_success(stack: Stack) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": '["a", "p1", "b"]'}, next_nodes=["prune"]
                ),
                GraphNodeModel(
                    node_name="Prune",
                    identifier="prune",
                    inputs={"item": "${{ split.outputs.item }}"},
                    next_nodes=["after"],
                ),
                GraphNodeModel(node_name="Echo", identifier="after", inputs={"text": "${{ prune.outputs.result }}"}),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ prune.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "SUCCESS"
    by = by_identifier(run(m.list_states(run_id)))
    pruned = [s for s in by["prune"] if s["status"] == "PRUNED"]
    assert len(pruned) == 1
    assert pruned[0]["inputs"] == {"item": "p1"}
    assert pruned[0]["data"] == {"reason": "pruned p1"}
    assert pruned[0]["outputs"] is None and pruned[0]["error"] is None
    # No children under the pruned state; the two others each got theirs.
    assert sorted(s["outputs"]["text"] for s in by["after"]) == ["a", "b"]
    assert all(s["parents"]["prune"] != pruned[0]["id"] for s in by["after"])
    # ALL_SUCCESS unite: PRUNED is fine, and it gathers the SUCCESS branches only.
    assert len(by["collect"]) == 1
    assert json.loads(by["collect"][0]["outputs"]["values"]) == ["a", "b"]
    assert done["counts"] == {"SUCCESS": 8, "PRUNED": 1}


def test_prune_of_the_root_ends_the_run_successfully(stack: Stack) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Prune", identifier="p", inputs={"item": "p-root"}, next_nodes=["e"]),
                GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "${{ p.outputs.result }}"}),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "SUCCESS"
    assert done["counts"] == {"PRUNED": 1}


def test_flaky_node_is_retried_until_it_succeeds(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    calls = tmp_path / "flaky"
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Flaky",
                    identifier="flaky",
                    inputs={"path": str(calls), "times": "2"},
                    next_nodes=["after"],
                ),
                GraphNodeModel(node_name="Echo", identifier="after", inputs={"text": "${{ flaky.outputs.calls }}"}),
            ],
            secrets={},
            retry_policy=FAST_RETRY,
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    by = by_identifier(run(m.list_states(run_id)))
    chain = sorted(by["flaky"], key=lambda s: s["retry_count"])
    assert [(s["status"], s["retry_count"]) for s in chain] == [
        ("RETRY_CREATED", 0),
        ("RETRY_CREATED", 1),
        ("SUCCESS", 2),
    ]
    assert [s["retry_of"] for s in chain] == [None, chain[0]["id"], chain[1]["id"]]
    assert [s["error"] for s in chain[:2]] == ["RuntimeError: flaky failure 1", "RuntimeError: flaky failure 2"]
    assert chain[2]["outputs"] == {"calls": "3"}
    assert calls.read_text() == "xxx"
    # The child ran once, under the successful retry.
    assert [(s["outputs"], s["parents"]["flaky"]) for s in by["after"]] == [({"text": "3"}, chain[2]["id"])]


def test_spent_retry_budget_errors_with_the_text_and_fails_the_run(stack: Stack) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Fail", identifier="f", inputs={"text": "boom"}, next_nodes=["e"]),
                GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "${{ f.outputs.text }}"}),
            ],
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=100),
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "FAILED"
    assert done["finished_at"] is not None
    states = sorted(run(m.list_states(run_id)), key=lambda s: s["retry_count"])
    assert [(s["identifier"], s["status"], s["retry_count"]) for s in states] == [
        ("f", "RETRY_CREATED", 0),
        ("f", "ERRORED", 1),
    ]
    assert states[1]["error"] == "ValueError: always fails: boom"


def test_errored_branch_under_all_success_unite_fails_the_run_instead_of_hanging(stack: Stack) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": '["a", "x1", "b"]'}, next_nodes=["work"]
                ),
                GraphNodeModel(node_name="Prune", identifier="work", inputs={"item": "${{ split.outputs.item }}"}),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ work.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=100),
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "FAILED"
    by = by_identifier(run(m.list_states(run_id)))
    assert "collect" not in by
    errored = [s for s in by["work"] if s["status"] == "ERRORED"]
    assert [(s["inputs"]["item"], s["retry_count"], s["error"]) for s in errored] == [
        ("x1", 1, "ValueError: bad item x1")
    ]
    assert done["counts"] == {"SUCCESS": 5, "RETRY_CREATED": 1, "ERRORED": 1}


def test_invalid_inputs_are_not_retried(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    ran = tmp_path / "strict"
    run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="Strict", identifier="s", inputs={"number": "12", "path": str(ran)})],
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=3, strategy=RetryStrategyEnum.FIXED, backoff_factor=100),
        )
    )
    run_id = run(m.trigger(name, inputs={"number": "twelve"}))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "FAILED"
    states = run(m.list_states(run_id))
    assert [(s["status"], s["retry_count"]) for s in states] == [("ERRORED", 0)]
    assert "invalid" in states[0]["error"] and "number" in states[0]["error"]
    assert not ran.exists()  # execute never ran
    # The same graph with valid inputs runs (the failure was the input, not the node).
    ok = run(m.trigger(name, inputs={"number": "12"}))["run_id"]
    assert run(m.wait(ok, timeout=60))["status"] == "SUCCESS"


def test_fixed_700ms_backoff_starts_the_retry_no_earlier_than_650ms_after_the_failure(
    stack: Stack, tmp_path: Path
) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    path = tmp_path / "stamps"
    run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="FlakyStamp", identifier="f", inputs={"path": str(path), "times": "1"})],
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=700),
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    first, second = stamps(path)
    gap = second - first
    report_lateness(f"{stack.name} retry FIXED 700 ms (countdown)", [gap - 0.7])
    assert gap >= 0.65, f"the retry started {gap:.3f} s after the failure"
    assert gap < 3.0, f"the retry started {gap:.3f} s after the failure"


def test_exponential_backoff_grows_and_is_capped_by_max_delay(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    path = tmp_path / "stamps"
    # Delays: 300 ms, then 300 * 10 = 3000 ms capped at 800 ms.
    policy = RetryPolicyModel(
        max_retries=2, strategy=RetryStrategyEnum.EXPONENTIAL, backoff_factor=300, exponent=10, max_delay=800
    )
    run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="FlakyStamp", identifier="f", inputs={"path": str(path), "times": "2"})],
            secrets={},
            retry_policy=policy,
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    t = stamps(path)
    gaps = [t[1] - t[0], t[2] - t[1]]
    report_lateness(f"{stack.name} retry EXPONENTIAL 300/800 ms (countdown)", [gaps[0] - 0.3, gaps[1] - 0.8])
    assert 0.28 <= gaps[0] < 2.0, gaps
    assert 0.78 <= gaps[1] < 2.5, gaps  # uncapped, it would be 3 s


def test_requeue_polls_several_times_without_spending_retries(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    path = tmp_path / "poll"
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Poll",
                    identifier="poll",
                    inputs={"path": str(path), "times": "3", "delay_ms": "400"},
                    next_nodes=["after"],
                ),
                GraphNodeModel(node_name="Echo", identifier="after", inputs={"text": "${{ poll.outputs.calls }}"}),
            ],
            secrets={},
            # A requeue is not a failure: with no retries at all the polling still goes on.
            retry_policy=RetryPolicyModel(max_retries=0),
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    times_file = Path(str(path) + ".times")
    wait_until(lambda: len(stamps(times_file)) >= 1, timeout=30, what="first poll")
    waiting = by_identifier(run(m.list_states(run_id)))["poll"]
    assert len(waiting) == 1 and waiting[0]["status"] in {"CREATED", "QUEUED"}, waiting
    assert waiting[0]["retry_count"] == 0
    assert run(m.get_run(run_id))["status"] == "RUNNING"

    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    by = by_identifier(run(m.list_states(run_id)))
    assert len(by["poll"]) == 1  # the same state went back to the queue; no new states
    poll = by["poll"][0]
    assert poll["id"] == waiting[0]["id"]
    assert (poll["status"], poll["retry_count"], poll["outputs"]["calls"]) == ("SUCCESS", 0, "4")
    assert by["after"][0]["outputs"] == {"text": "4"}
    t = stamps(times_file)
    gaps = [b - a for a, b in pairwise(t)]
    report_lateness(f"{stack.name} requeue 400 ms x3 (countdown)", [g - 0.4 for g in gaps])
    assert len(gaps) == 3
    assert all(0.38 <= g < 3.0 for g in gaps), gaps


def test_start_delay_holds_the_root_back(stack: Stack, tmp_path: Path) -> None:
    ensure_worker(stack)
    m = stack.manager(NS)
    name = uid()
    path = tmp_path / "stamps"
    run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="Stamp", identifier="s", inputs={"path": str(path), "tag": "root"})],
            secrets={},
        )
    )
    t0 = time.time()
    run_id = run(m.trigger(name, start_delay=1500))["run_id"]
    early = run(m.get_run(run_id))
    assert early["status"] == "PENDING"
    assert [s["status"] for s in run(m.list_states(run_id))] == ["QUEUED"]
    assert run(m.wait(run_id, timeout=30))["status"] == "SUCCESS"
    (started,) = stamps(path)
    report_lateness(f"{stack.name} start_delay 1500 ms (countdown)", [started - t0 - 1.5])
    assert started - t0 >= 1.5 - 0.03, f"the root ran {started - t0:.3f} s after the trigger"
    assert started - t0 < 4.5
