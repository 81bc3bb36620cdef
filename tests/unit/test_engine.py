"""The pure planner: fan-out states, children, scope counts and barrier states (no ledger)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exo_celery.engine import BUILT_AT_ONCE, PlanError, Source, plan_barrier_state, plan_root, plan_success
from exo_celery.graph import GraphNodeModel, UnitesModel
from exo_celery.status import StateStatus
from exo_celery.topology import Topology, analyse


def node(
    identifier: str, next_nodes: list[str] | None = None, *, unites: str | None = None, **inputs: str
) -> GraphNodeModel:
    return GraphNodeModel(
        node_name=f"N{identifier}",
        namespace="t",
        identifier=identifier,
        inputs=inputs,
        next_nodes=next_nodes,
        unites=UnitesModel(identifier=unites) if unites else None,
    )


def topo(*nodes: GraphNodeModel) -> Topology:
    result, errors = analyse(list(nodes))
    assert result is not None, errors
    return result


def ns(identifier: str) -> str:
    return "t"


def root_source(identifier: str = "a", sid: str = "A0") -> Source:
    return Source(sid, "run", identifier, {}, {}, "", sid)


def source_of(state: Any) -> Source:
    return Source(
        state.id, "run", state.identifier, state.parents, state.scopes, state.branch, state.execution_id or state.id
    )


UNITE = (
    node("a", ["b"]),
    node("b", ["c"], x="${{ a.outputs.v }}"),
    node("c", ["u"], y="${{ b.outputs.w }}/${{ a.outputs.v }}"),
    node("u", unites="a", all="${{ b.outputs.w }}", cs="${{ c.outputs.z }}", av="${{ a.outputs.v }}"),
)


def test_fan_out_output_states_children_and_scope_count() -> None:
    t = topo(*UNITE)
    plan = plan_success(t, ns, root_source(), [{"v": "1"}, {"v": "2"}, {"v": "3"}], {}, {})

    # N outputs -> N-1 extra output states, SUCCESS, same execution.
    assert len(plan.output_states) == 2
    assert all(s.identifier == "a" and s.status is StateStatus.SUCCESS for s in plan.output_states)
    assert [s.outputs for s in plan.output_states] == [{"v": "2"}, {"v": "3"}]
    assert all(s.execution_id == "A0" for s in plan.output_states)
    assert len({s.id for s in plan.output_states} | {"A0"}) == 3

    # One child per output per next node, reading its own output.
    assert [c.identifier for c in plan.children] == ["b", "b", "b"]
    assert [c.inputs for c in plan.children] == [{"x": "1"}, {"x": "2"}, {"x": "3"}]
    output_ids = ["A0", *(s.id for s in plan.output_states)]
    assert [c.parents for c in plan.children] == [{"a": i} for i in output_ids]
    assert all(c.status is StateStatus.QUEUED and c.namespace == "t" and c.node_name == "Nb" for c in plan.children)

    # Branch keys sort in fan-out order, even past 10 outputs (checked below).
    branches = [c.branch for c in plan.children]
    assert branches == sorted(branches) and len(set(branches)) == 3

    # One unite scope for the execution, counting the three children.
    assert len(plan.opens) == 1
    opened = plan.opens[0]
    assert (opened.barrier, opened.outstanding, opened.opener_id) == ("u", 3, "A0")
    assert all(c.scopes == {"u": opened.id} for c in plan.children)


def test_a_wide_fan_out_is_resolved_whole_then_built_a_chunk_at_a_time_once() -> None:
    """Past BUILT_AT_ONCE, the states are built while written: in order, in chunks, never all at once."""
    t = topo(*UNITE)
    width = BUILT_AT_ONCE + 5
    plan = plan_success(t, ns, root_source(), [{"v": str(i)} for i in range(width)], {}, {})
    assert (len(plan.children), len(plan.output_states)) == (width, width - 1)
    assert plan.opens[0].outstanding == width  # counted before any state is built
    chunks = list(plan.children.chunks(400))
    assert [len(c) for c in chunks] == [400, 400, 205]
    children = [c for chunk in chunks for c in chunk]
    assert [c.inputs["x"] for c in children] == [str(i) for i in range(width)]
    assert all(c.scopes == {"u": plan.opens[0].id} for c in children)
    outputs = [s for chunk in plan.output_states.chunks(1000) for s in chunk]
    assert [c.parents["a"] for c in children] == ["A0", *(s.id for s in outputs)]
    with pytest.raises(AssertionError, match="read once"):
        plan.children.chunks(400)  # built and handed to the writer already

    bad = [{"v": str(i)} for i in range(width)] + [{"other": "x"}]  # the last output lacks `v`
    with pytest.raises(PlanError, match="produced no field 'v'"):
        plan_success(t, ns, root_source(), bad, {}, {})  # found before anything is built for writing


def test_branch_keys_sort_in_fan_out_order_past_ten() -> None:
    t = topo(*UNITE)
    outputs = [{"v": str(i)} for i in range(25)]
    plan = plan_success(t, ns, root_source(), outputs, {}, {})
    by_branch = sorted(plan.children, key=lambda c: c.branch)
    assert [c.inputs["x"] for c in by_branch] == [str(i) for i in range(25)]


def test_single_output_adds_no_branch_level() -> None:
    t = topo(*UNITE)
    plan = plan_success(t, ns, root_source(), [{"v": "1"}], {}, {})
    assert plan.output_states == []
    assert [c.branch for c in plan.children] == [""]
    assert plan.opens[0].outstanding == 1


def test_nested_fan_out_inherits_scope_and_lineage() -> None:
    t = topo(*UNITE)
    first = plan_success(t, ns, root_source(), [{"v": "1"}, {"v": "2"}], {}, {})
    b0 = first.children[0]
    plan = plan_success(t, ns, source_of(b0), [{"w": "p"}, {"w": "q"}], {"A0": {"v": "1"}}, {})
    assert len(plan.output_states) == 1
    assert plan.output_states[0].scopes == b0.scopes  # the extra output is counted in the same unite scope
    assert [c.inputs for c in plan.children] == [{"y": "p/1"}, {"y": "q/1"}]
    assert [c.parents for c in plan.children] == [
        {"a": "A0", "b": b0.id},
        {"a": "A0", "b": plan.output_states[0].id},
    ]
    assert all(c.scopes == b0.scopes for c in plan.children)
    assert [c.branch for c in plan.children] == [b0.branch + "000000.", b0.branch + "000001."]
    assert plan.opens == []  # b opens no barrier


def test_empty_fan_out_opens_unite_scope_with_zero() -> None:
    t = topo(*UNITE)
    plan = plan_success(t, ns, root_source(), [], {}, {})
    assert plan.output_states == [] and plan.children == []
    assert [(o.barrier, o.outstanding, o.opener_id) for o in plan.opens] == [("u", 0, "A0")]


def test_missing_output_field_is_a_plan_error_naming_it() -> None:
    t = topo(*UNITE)
    with pytest.raises(PlanError) as info:
        plan_success(t, ns, root_source(), [{"nope": "1"}], {}, {})
    assert "'b'" in str(info.value) and "'v'" in str(info.value) and "a.outputs.v" in str(info.value)


def test_missing_store_key_is_a_plan_error() -> None:
    t = topo(node("a", ["b"]), node("b", k="${{ store.key }}"))
    with pytest.raises(PlanError, match="'key'"):
        plan_success(t, ns, root_source(), [{}], {}, {})
    plan = plan_success(t, ns, root_source(), [{}], {}, {"key": "V"})
    assert plan.children[0].inputs == {"k": "V"}


def test_plan_root_overrides_template_inputs() -> None:
    t = topo(node("a", ["b"], x="tmpl", y="${{ store.s }}"), node("b"))
    state = plan_root(t, ns, "run", {"x": "given"}, {"s": "S"})
    assert (state.identifier, state.inputs, state.parents, state.branch) == ("a", {"x": "given", "y": "S"}, {}, "")


PARALLEL = (
    node("splitter", ["p1", "p2"]),
    node("p1", ["merger"], t="${{ splitter.outputs.o }}"),
    node("p2", ["merger"]),
    node("merger", a="${{ p1.outputs.r }}", b="${{ p2.outputs.r }}"),
)


def test_join_opens_one_scope_per_output() -> None:
    t = topo(*PARALLEL)
    plan = plan_success(t, ns, root_source("splitter", "S0"), [{"o": "x"}, {"o": "y"}], {}, {})
    assert [c.identifier for c in plan.children] == ["p1", "p2", "p1", "p2"]
    output_ids = ["S0", plan.output_states[0].id]
    assert [(o.barrier, o.outstanding, o.opener_id) for o in plan.opens] == [
        ("merger", 2, output_ids[0]),
        ("merger", 2, output_ids[1]),
    ]
    assert plan.opens[0].id != plan.opens[1].id
    for opened in plan.opens:
        assert sum(c.scopes == {"merger": opened.id} for c in plan.children) == 2


def test_join_state_reads_single_values() -> None:
    t = topo(*PARALLEL)
    opener = root_source("splitter", "S0")
    gathered = {"p1": [("P1", {"r": "A"})], "p2": [("P2", {"r": "B"})]}
    state = plan_barrier_state(t, ns, t.barriers["merger"], opener, "merger@S0", gathered, {}, {})
    assert state.inputs == {"a": "A", "b": "B"}
    assert state.parents == {"splitter": "S0", "p1": "P1", "p2": "P2"}
    assert state.fingerprint == "merger@S0"
    assert state.identifier == "merger" and state.status is StateStatus.QUEUED


def test_join_reads_array_when_a_predecessor_fanned_out() -> None:
    t = topo(*PARALLEL)
    gathered = {"p1": [("P1", {"r": "A"}), ("P1b", {"r": "A2"})], "p2": [("P2", {"r": "B"})]}
    state = plan_barrier_state(t, ns, t.barriers["merger"], root_source("splitter", "S0"), "m", gathered, {}, {})
    assert json.loads(state.inputs["a"]) == ["A", "A2"]
    assert state.inputs["b"] == "B"


def test_join_may_read_the_splitter_when_its_outputs_are_known() -> None:
    t = topo(*PARALLEL[:3], node("merger", s="${{ splitter.outputs.o }}", a="${{ p1.outputs.r }}"))
    gathered = {"p1": [("P1", {"r": "A"})]}
    state = plan_barrier_state(
        t, ns, t.barriers["merger"], root_source("splitter", "S0"), "m", gathered, {"S0": {"o": "X"}}, {}
    )
    assert state.inputs == {"s": "X", "a": "A"}


def test_join_reads_the_splitter_as_transitions_calls_it() -> None:
    # ledger/barriers._fire: gathered has an (empty) entry for the awaited node, outputs_of only the opener's parents.
    t = topo(*PARALLEL[:3], node("merger", s="${{ splitter.outputs.o }}", a="${{ p1.outputs.r }}"))
    gathered = {"splitter": [("S0", {"o": "X"})], "p1": [("P1", {"r": "A"})]}
    state = plan_barrier_state(t, ns, t.barriers["merger"], root_source("splitter", "S0"), "m", gathered, {}, {})
    assert state.inputs == {"s": "X", "a": "A"}


def test_unite_state_gathers_json_arrays_in_fan_out_order() -> None:
    t = topo(*UNITE)
    gathered = {
        "a": [("A0", {"v": "1"}), ("A1", {"v": "2"})],
        "b": [("B0", {"w": "p"}), ("B1", {"w": "q"}), ("B2", {"w": "r"})],
        "c": [("C0", {"z": 1}), ("C1", {"z": 2})],
    }
    state = plan_barrier_state(t, ns, t.barriers["u"], root_source(), "u@A0", gathered, {}, {})
    assert json.loads(state.inputs["all"]) == ["p", "q", "r"]
    assert json.loads(state.inputs["cs"]) == [1, 2]
    assert json.loads(state.inputs["av"]) == ["1", "2"]
    assert state.parents == {"a": "A0"}  # the root's (empty) lineage, and the state it waited on
    assert state.fingerprint == "u@A0"


def test_unite_state_with_no_successful_branches_reads_empty_arrays() -> None:
    t = topo(*UNITE)
    gathered: dict[str, list[tuple[str, dict[str, Any]]]] = {"a": [], "b": [], "c": []}
    state = plan_barrier_state(t, ns, t.barriers["u"], root_source(), "u@A0", gathered, {}, {})
    assert state.inputs == {"all": "[]", "cs": "[]", "av": "[]"}


def test_unite_state_missing_field_in_a_branch_is_a_plan_error() -> None:
    t = topo(*UNITE)
    gathered = {"a": [("A0", {"v": "1"})], "b": [("B0", {"w": "p"}), ("B1", {})], "c": []}
    with pytest.raises(PlanError, match="'w'"):
        plan_barrier_state(t, ns, t.barriers["u"], root_source(), "u@A0", gathered, {}, {})


def test_nested_unite_inner_state_belongs_to_outer_scope() -> None:
    t = topo(
        node("a", ["b"]),
        node("b", ["c"]),
        node("c", ["inner"]),
        node("inner", ["outer"], unites="b", cs="${{ c.outputs.z }}"),
        node("outer", unites="a"),
    )
    top = plan_success(t, ns, root_source(), [{"v": "1"}], {}, {})
    b_state = top.children[0]
    assert b_state.scopes == {"outer": "outer@A0"}
    mid = plan_success(t, ns, source_of(b_state), [{}, {}], {}, {})
    assert [(o.barrier, o.outstanding) for o in mid.opens] == [("inner", 2)]
    assert all(c.scopes == {"outer": "outer@A0", "inner": mid.opens[0].id} for c in mid.children)
    inner = plan_barrier_state(
        t, ns, t.barriers["inner"], source_of(b_state), mid.opens[0].id, {"c": [("C0", {"z": "1"})]}, {}, {}
    )
    assert inner.scopes == {"outer": "outer@A0"}
    assert inner.inputs == {"cs": '["1"]'}
