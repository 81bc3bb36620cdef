"""The outcome planner (plan.py): every branch of plan_outcome, the retry and due-time rules, the counter
moves, barrier_fires and a barrier's state (no ledger)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from exo_celery.engine import CompiledGraph, InputRules, NewState, Planned, Source, barrier_fires
from exo_celery.graph import GraphNodeModel, GraphTemplate, RetryPolicyModel
from exo_celery.ledger.moves import COMPLETE
from exo_celery.outcomes import BarrierStrategy, Outcome
from exo_celery.plan import (
    MAX_DELIVERIES,
    OutcomePlan,
    Reads,
    gather_needs,
    opened_or_closed,
    plan_fired,
    plan_outcome,
    reads_needed,
    retry_due,
    retry_state,
    run_move,
    scope_move,
    status_for_due,
    text,
)
from exo_celery.retry import RetryStrategyEnum
from exo_celery.status import StateStatus
from exo_celery.topology import JOIN, Barrier, analyse

from .test_engine import node

S = StateStatus
NOW = 1_000.0
COUNTDOWN = 300.0
RULES = InputRules()


def graph(*nodes: GraphNodeModel, policy: RetryPolicyModel | None = None) -> CompiledGraph:
    template = GraphTemplate(name="g", namespace="t", nodes=list(nodes), retry_policy=policy or RetryPolicyModel())
    topology, errors = analyse(template.nodes)
    assert topology is not None, errors
    return CompiledGraph(template, topology, 1, "")


CHAIN = graph(
    node("a", ["b"]),
    node("b", ["u"], x="${{ a.outputs.v }}", s="${{ store.k }}"),
    node("u", unites="a", all="${{ b.outputs.w }}"),
    policy=RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=5000),
)


def row(identifier: str = "a", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "S1",
        "run_id": "R1",
        "identifier": identifier,
        "node_name": f"N{identifier}",
        "namespace": "t",
        "graph_name": "g",
        "inputs": {"i": "1"},
        "parents": {},
        "scopes": {},
        "branch": "",
        "execution_id": None,
        "retry_count": 0,
        "due_at": NOW,
    }
    return {**base, **over}


def plan(outcome: Outcome, state: dict[str, Any] | None = None, reads: Reads | None = None) -> OutcomePlan:
    return plan_outcome(CHAIN, state or row(), outcome, NOW, reads or Reads(), max_countdown=COUNTDOWN, rules=RULES)


# -- the due-time and retry rules -----------------------------------------------------------------
def test_due_soon_is_queued_and_due_later_created() -> None:
    assert status_for_due(NOW, NOW, COUNTDOWN) is S.QUEUED
    assert status_for_due(NOW + COUNTDOWN, NOW, COUNTDOWN) is S.QUEUED
    assert status_for_due(NOW + COUNTDOWN + 0.001, NOW, COUNTDOWN) is S.CREATED


def test_retry_due_while_retries_are_left_and_the_error_is_retryable() -> None:
    policy = RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.LINEAR, backoff_factor=1000)
    assert retry_due(policy, 0, True, NOW) == NOW + 1.0
    assert retry_due(policy, 1, True, NOW) == NOW + 2.0
    assert retry_due(policy, 2, True, NOW) is None  # retry_count == max_retries: no retry left
    assert retry_due(policy, 0, False, NOW) is None  # e.g. invalid inputs: never retried
    assert retry_due(RetryPolicyModel(max_retries=0), 0, True, NOW) is None


def test_retry_due_uses_the_policy_jitter() -> None:
    policy = RetryPolicyModel(strategy=RetryStrategyEnum.FIXED_FULL_JITTER, backoff_factor=1000)
    random.seed(7)
    dues = {retry_due(policy, 0, True, NOW) for _ in range(50)}
    assert all(d is not None and NOW <= d <= NOW + 1.0 for d in dues) and len(dues) > 1


def test_retry_state_keeps_node_inputs_lineage_and_scopes() -> None:
    state = row("b", parents={"a": "A"}, scopes={"u": "u@A"}, branch="000001.", retry_count=1)
    retry = retry_state(state, S.CREATED)
    assert (retry.identifier, retry.node_name, retry.namespace) == ("b", "Nb", "t")
    assert (retry.inputs, retry.parents, retry.scopes, retry.branch) == (
        {"i": "1"},
        {"a": "A"},
        {"u": "u@A"},
        "000001.",
    )
    assert (retry.status, retry.retry_of, retry.retry_count) == (S.CREATED, "S1", 2)
    assert retry.id != "S1"


def test_max_deliveries_is_the_documented_twenty() -> None:
    assert MAX_DELIVERIES == 20


# -- plan_outcome: every branch --------------------------------------------------------------------
def test_success_creates_children_and_opens_the_unite_scope() -> None:
    p = plan(Outcome("success", outputs=[{"v": "1"}, {"v": "2"}], store_writes={"k": "w"}))
    assert p.status is S.SUCCESS and p.values["status"] == "SUCCESS"
    assert p.values["outputs"] == {"v": "1"}
    assert (p.values["lease_token"], p.values["lease_until"], p.values["updated_at"]) == (None, None, NOW)
    assert [c.inputs for c in p.created] == [{"x": "1", "s": "w"}, {"x": "2", "s": "w"}]  # the write is read
    assert len(p.finished) == 1 and p.finished[0].inputs == {"i": "1"} and p.finished[0].status is S.SUCCESS
    assert [(o.barrier, o.outstanding) for o in p.opens] == [("u", 2)]
    assert p.store_writes == {"k": "w"} and p.created_due == NOW
    assert (p.leaving, p.failed, p.pruned, p.requeue) == (True, 0, 0, None)
    assert not p.no_other_rows


def test_success_of_a_leaf_touches_no_other_row() -> None:
    p = plan(Outcome("success", outputs=[{"all": "x"}]), row("u"))
    assert p.status is S.SUCCESS and p.created == [] and p.opens == [] and p.no_other_rows


def test_success_reads_ancestor_outputs_and_the_store() -> None:
    b = row("b", parents={"a": "A"})
    assert reads_needed(CHAIN, row("a"), Outcome("success")) == ([], True)  # b reads the store
    assert reads_needed(CHAIN, b, Outcome("success")) == ([], False)  # u is a barrier: it fires on its own
    for kind in ("error", "prune", "requeue"):  # a Literal each
        assert reads_needed(CHAIN, row("a"), Outcome(kind)) == ([], False)
    chain = graph(node("a", ["b"]), node("b", ["c"]), node("c", y="${{ a.outputs.v }}"))
    assert reads_needed(chain, row("b", parents={"a": "A"}), Outcome("success")) == (["A"], False)
    p = plan_outcome(
        chain,
        row("b", parents={"a": "A"}),
        Outcome("success", outputs=[{}]),
        NOW,
        Reads({"A": {"v": "7"}}),
        max_countdown=COUNTDOWN,
        rules=RULES,
    )
    assert [c.inputs for c in p.created] == [{"y": "7"}]


def test_success_whose_children_cannot_be_planned_is_next_created_error() -> None:
    p = plan(Outcome("success", outputs=[{"v": "1"}], store_writes={"other": "x"}))  # store.k is not set
    assert p.status is S.NEXT_CREATED_ERROR and p.values["status"] == "NEXT_CREATED_ERROR"
    assert "store key 'k'" in p.values["error"]
    assert p.created == p.finished == [] and p.opens == []
    assert p.failed == 1 and p.leaving and p.store_writes == {"other": "x"}  # the writes still commit


def test_requeue_due_soon_is_queued_and_sent_again() -> None:
    p = plan(Outcome("requeue", delay=5.0))
    assert p.status is S.QUEUED and p.values["due_at"] == NOW + 5.0
    assert (p.values["attempts"], p.values["dispatched_at"]) == (0, NOW)
    assert p.requeue is not None and p.requeue.state_id == "S1" and p.requeue.due_at == NOW + 5.0
    assert not p.leaving and p.failed == p.pruned == 0 and p.created == []


def test_requeue_due_later_waits_created_for_beat() -> None:
    p = plan(Outcome("requeue", delay=COUNTDOWN + 1))
    assert p.status is S.CREATED and p.requeue is None and not p.leaving


def test_prune_records_its_data() -> None:
    p = plan(Outcome("prune", data={"why": "x"}))
    assert p.status is S.PRUNED and p.values["data"] == {"why": "x"}
    assert (p.pruned, p.failed, p.leaving) == (1, 0, True)
    assert plan(Outcome("prune")).values["data"] == {}


def test_an_error_with_retries_left_creates_the_retry() -> None:
    p = plan(Outcome("error", error="boom"))
    assert p.status is S.RETRY_CREATED and p.values["error"] == "boom"
    (retry,) = p.created
    assert (retry.retry_of, retry.retry_count, retry.status) == ("S1", 1, S.QUEUED)
    assert p.created_due == NOW + 5.0 and p.failed == 0 and p.leaving


def test_a_retry_due_beyond_the_countdown_waits_created() -> None:
    slow = graph(node("a"), policy=RetryPolicyModel(strategy=RetryStrategyEnum.FIXED, backoff_factor=400_000))
    p = plan_outcome(slow, row(), Outcome("error", error="e"), NOW, Reads(), max_countdown=COUNTDOWN, rules=RULES)
    assert p.status is S.RETRY_CREATED and p.created[0].status is S.CREATED and p.created_due == NOW + 400.0


def test_an_error_without_retries_left_or_not_retryable_is_errored() -> None:
    for p in (
        plan(Outcome("error", error="e"), row(retry_count=2)),
        plan(Outcome("error", error="e", retryable=False)),
    ):
        assert p.status is S.ERRORED and p.values["status"] == "ERRORED"
        assert p.failed == 1 and p.created == [] and p.leaving


def test_error_text_is_storable() -> None:
    assert text("a\x00b\ud800") == "a\\x00b\\ud800"
    assert text(None) is None
    assert plan(Outcome("error", error="x\x00")).values["error"] == "x\\x00"


def test_every_planned_status_is_a_declared_completion_move() -> None:
    outcomes = [
        Outcome("success", outputs=[{"v": "1"}], store_writes={"k": "v"}),
        Outcome("success", outputs=[{"v": "1"}]),
        Outcome("requeue", delay=1),
        Outcome("requeue", delay=COUNTDOWN * 2),
        Outcome("prune"),
        Outcome("error"),
        Outcome("error", retryable=False),
    ]
    statuses = {plan(o).status for o in outcomes} | {plan(Outcome("error"), row(retry_count=9)).status}
    assert statuses == COMPLETE.targets


# -- counters -----------------------------------------------------------------------------------
UNITE = Barrier("u", "a", "ALL_SUCCESS", frozenset({"b", "c"}))


def new(identifier: str, scopes: dict[str, str], status: StateStatus = S.QUEUED) -> NewState:
    return NewState(f"id-{identifier}", identifier, f"N{identifier}", "t", {}, {}, scopes, "", status)


def outcome_plan(**over: Any) -> OutcomePlan:
    planned = {k: Planned.of(over.pop(k)) for k in ("created", "finished") if k in over}
    return OutcomePlan(S.SUCCESS, {}, NOW, **planned, **over)


def test_scope_move_counts_new_states_in_the_scope_and_the_state_leaving() -> None:
    born = [new("c", {"u": "u@A"}), new("c", {"u": "u@A"}), new("c", {"u": "u@B"}), new("x", {"u": "u@A"})]
    move = scope_move(outcome_plan(), UNITE, "u@A", born, [])
    assert move is not None and (move.scope, move.delta, move.failed, move.pruned) == ("u@A", 1, 0, 0)
    assert scope_move(outcome_plan(created=born), UNITE, "u@A", [], []) == move  # created or fired alike
    assert scope_move(outcome_plan(), UNITE, "u@A", born[:1], []) is None  # +1 -1: nothing moves
    leaf = scope_move(outcome_plan(), UNITE, "u@A", [], [])
    assert leaf is not None and leaf.delta == -1


def test_scope_move_of_a_failure_a_prune_a_requeue_and_a_fired_error() -> None:
    failed = scope_move(outcome_plan(failed=1), UNITE, "u@A", [new("c", {"u": "u@A"})], [])
    assert failed is not None and (failed.delta, failed.failed) == (0, 1)  # a retry-less error still counts
    pruned = scope_move(outcome_plan(pruned=1), UNITE, "u@A", [], [])
    assert pruned is not None and (pruned.delta, pruned.pruned) == (-1, 1)
    assert scope_move(outcome_plan(leaving=False), UNITE, "u@A", [], []) is None  # a requeue stays
    errored = [new("c", {"u": "u@A"}, S.ERRORED)]
    fired = scope_move(outcome_plan(), UNITE, "u@A", [], errored)
    assert fired is not None and (fired.delta, fired.failed) == (-1, 1)


def test_run_move_counts_states_outside_regions_and_open_scopes() -> None:
    outside = [new("z", {}), new("z", {})]
    assert run_move(outcome_plan(created=outside), False, [], [], 0) == (1, 0)  # +2 -1
    assert run_move(outcome_plan(), True, [], [], 0) == (0, 0)  # a state inside a region: only its scopes
    assert run_move(outcome_plan(created=[new("c", {"u": "u@A"})]), False, [], [], 1) == (0, 0)  # +1 scope -1
    assert run_move(outcome_plan(failed=1), False, [new("z", {})], [new("e", {}, S.ERRORED)], -1) == (-1, 2)
    assert run_move(outcome_plan(leaving=False), False, [], [], 0) == (0, 0)


def test_opened_or_closed() -> None:
    assert [opened_or_closed(0, 2), opened_or_closed(2, 0), opened_or_closed(1, 2), opened_or_closed(0, 0)] == [
        1,
        -1,
        0,
        0,
    ]


# -- barriers -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "failed", "pruned", "fires"),
    [
        ("ALL_SUCCESS", 0, 0, True),
        ("ALL_SUCCESS", 0, 3, True),  # PRUNED branches do not block an ALL_SUCCESS unite
        ("ALL_SUCCESS", 1, 0, False),
        ("ALL_SUCCESS", 1, 1, False),
        ("ALL_DONE", 0, 0, True),
        ("ALL_DONE", 2, 0, True),  # fires whatever the branches' status (the run still reports FAILED)
        ("ALL_DONE", 0, 2, True),
        ("ALL_DONE", 1, 1, True),
        (JOIN, 0, 0, True),
        (JOIN, 1, 0, False),  # a join runs only when every predecessor succeeded
        (JOIN, 0, 1, False),
    ],
)
def test_barrier_fires(strategy: BarrierStrategy, failed: int, pruned: int, fires: bool) -> None:
    barrier = Barrier("u", "a", strategy, frozenset({"b"}))
    assert barrier_fires(barrier, failed, pruned) is fires


def test_a_barrier_state_gathers_the_scope_and_an_unresolvable_one_is_errored() -> None:
    barrier = CHAIN.topology.barriers["u"]
    opener = Source("A", "R1", "a", {}, {}, "", "A")
    needs = gather_needs(CHAIN.topology, barrier, opener)
    assert (needs.gather_ids, needs.region_ids, needs.lineage, needs.reads_store) == (["b"], ["b"], [], False)
    gathered = {"b": [("B1", {"w": "x"}), ("B2", {"w": "y"})]}
    state, error = plan_fired(CHAIN, barrier, opener, "u@A", gathered, {}, {}, RULES)
    assert error is None and state.inputs == {"all": '["x", "y"]'} and state.fingerprint == "u@A"
    assert state.status is S.QUEUED and state.parents == {"a": "A"}
    broken, error = plan_fired(CHAIN, barrier, opener, "u@A", {"b": [("B1", {})]}, {}, {}, RULES)
    assert error is not None and error.startswith("inputs could not be resolved: ")
    assert (broken.status, broken.fingerprint, broken.inputs, broken.identifier) == (S.ERRORED, "u@A", {}, "u")
