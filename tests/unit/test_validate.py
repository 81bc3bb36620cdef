"""Graph validation (SPEC 3) and the topology facts it rests on: one test per rule, messages that name the problem."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from exo_celery.graph import CronTrigger, GraphNodeModel, StoreConfigModel, UnitesModel, UnitesStrategyEnum
from exo_celery.node import BaseNode, node_schema
from exo_celery.topology import JOIN, Topology, analyse
from exo_celery.validate import ValidationReport, validate_template

NS = "t"


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str
        extra: str = ""

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Any:
        return self.Outputs(text=self.inputs.text)


class Free(BaseNode):
    """No required inputs: handy for structure-only graphs."""

    class Inputs(BaseModel):
        text: str = ""

    class Outputs(BaseModel):
        text: str
        other: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Any:
        return None


class NeedsKey(BaseNode):
    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        pass

    class Secrets(BaseModel):
        api_key: str
        region: str = "eu"

    def execute(self) -> Any:
        return None


REGISTRY = {(NS, cls.__name__): node_schema(cls) for cls in (Echo, Free, NeedsKey)}


def node(
    identifier: str,
    next_nodes: list[str] | None = None,
    *,
    unites: str | None = None,
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS,
    inputs: dict[str, Any] | None = None,
    name: str = "Free",
    namespace: str = NS,
) -> GraphNodeModel:
    return GraphNodeModel(
        node_name=name,
        namespace=namespace,
        identifier=identifier,
        inputs=inputs or {},
        next_nodes=next_nodes,
        unites=UnitesModel(identifier=unites, strategy=strategy) if unites else None,
    )


def check(
    nodes: list[GraphNodeModel],
    secrets: dict[str, str] | None = None,
    store_config: StoreConfigModel | None = None,
    triggers: list[CronTrigger] | None = None,
) -> ValidationReport:
    return validate_template(nodes, secrets or {}, store_config or StoreConfigModel(), triggers or [], REGISTRY)


def only_error(report: ValidationReport) -> str:
    assert report.missing_nodes == []
    assert len(report.errors) == 1, report.errors
    return report.errors[0]


def topo(nodes: list[GraphNodeModel]) -> Topology:
    result, errors = analyse(nodes)
    assert result is not None, errors
    return result


# --- valid graphs -------------------------------------------------------------------------------


def test_valid_linear_graph() -> None:
    report = check(
        [
            node("a", ["b"], name="Echo", inputs={"text": "hi"}),
            node("b", name="Echo", inputs={"text": "${{ a.outputs.text }} and ${{ store.k }}"}),
        ]
    )
    assert report.ok and report.errors == [] and report.missing_nodes == []
    assert report.topology is not None and report.topology.root == "a"


def test_valid_fan_out_unite_graph() -> None:
    report = check(
        [
            node("a", ["b"]),
            node("b", ["c"], inputs={"text": "${{ a.outputs.text }}"}),
            node("c", ["u"], inputs={"text": "${{ b.outputs.other }}/${{ a.outputs.text }}"}),
            node("u", unites="a", inputs={"text": "${{ c.outputs.text }} ${{ b.outputs.text }} ${{ a.outputs.text }}"}),
        ]
    )
    assert report.ok, report.errors


# --- one test per SPEC 3 rule --------------------------------------------------------------------


def test_duplicate_identifiers() -> None:
    error = only_error(check([node("a", ["b"]), node("b"), node("a")]))
    assert "duplicate identifier 'a'" in error


def test_next_nodes_naming_unknown_node() -> None:
    error = only_error(check([node("a", ["b", "ghost"]), node("b")]))
    assert "'a'" in error and "next_nodes" in error and "unknown node 'ghost'" in error


def test_unites_naming_unknown_node() -> None:
    error = only_error(check([node("a", ["u"]), node("u", unites="ghost")]))
    assert "'u'" in error and "unites" in error and "unknown node 'ghost'" in error


def test_zero_roots() -> None:
    errors = check([node("a", ["b"]), node("b", ["a"])]).errors
    assert any("exactly one root" in e and "found 0" in e for e in errors), errors


def test_two_roots() -> None:
    error = only_error(check([node("a", ["c"]), node("b", ["c"]), node("c")]))
    assert "exactly one root" in error and "found 2" in error and "'a'" in error and "'b'" in error


def test_cycle() -> None:
    error = only_error(check([node("r", ["a"]), node("a", ["b"]), node("b", ["c"]), node("c", ["a", "d"]), node("d")]))
    assert "cycle" in error and "['a', 'b', 'c']" in error  # 'd' is downstream of the cycle, not on it


def test_self_loop() -> None:
    error = only_error(check([node("a", ["a"])]))
    assert "'a'" in error and "itself" in error


def test_unites_identifier_not_an_ancestor() -> None:
    error = only_error(check([node("a", ["b", "c"]), node("b"), node("c", ["u"]), node("u", unites="b")]))
    assert "'u'" in error and "'b'" in error and "not an ancestor" in error


def test_placeholder_that_does_not_parse() -> None:
    error = only_error(check([node("a", ["b"]), node("b", inputs={"text": "x ${{ a.text }}"})]))
    assert "'b'" in error and "'text'" in error and "'${{ a.text }}'" in error and "does not parse" in error


def test_unterminated_placeholder() -> None:
    error = only_error(check([node("a", ["b"]), node("b", inputs={"text": "x ${{ a.outputs.text"})]))
    assert "'b'" in error and "unterminated" in error and "${{ a.outputs.text" in error


def test_placeholder_naming_unknown_node() -> None:
    error = only_error(check([node("a", ["b"]), node("b", inputs={"text": "${{ zz.outputs.text }}"})]))
    assert "'b'" in error and "unknown node 'zz'" in error


def test_placeholder_naming_a_non_ancestor() -> None:
    error = only_error(check([node("a", ["b", "c"]), node("b"), node("c", inputs={"text": "${{ b.outputs.text }}"})]))
    assert "'c'" in error and "${{ b.outputs.text }}" in error and "not an ancestor" in error


def test_placeholder_naming_itself() -> None:
    error = only_error(check([node("a", ["b"]), node("b", inputs={"text": "${{ b.outputs.text }}"})]))
    assert "'b'" in error and "not an ancestor" in error


def test_placeholder_naming_a_missing_output_field() -> None:
    error = only_error(
        check(
            [node("a", ["b"], name="Echo", inputs={"text": "x"}), node("b", inputs={"text": "${{ a.outputs.nope }}"})]
        )
    )
    assert "'b'" in error and "Echo has no output field 'nope'" in error and "'text'" in error


def test_required_input_missing() -> None:
    error = only_error(check([node("a", name="Echo", inputs={"extra": "x"})]))
    assert "'a'" in error and "required input 'text'" in error and "Echo" in error


def test_optional_input_may_be_left_out() -> None:
    assert check([node("a", name="Echo", inputs={"text": "x"})]).ok


def test_unknown_input_field() -> None:
    error = only_error(check([node("a", name="Echo", inputs={"text": "x", "txet": "y"})]))
    assert "'a'" in error and "unknown input 'txet'" in error and "Echo" in error


def test_secret_the_node_needs_is_missing() -> None:
    error = only_error(check([node("a", name="NeedsKey")]))
    assert "'a'" in error and "secret 'api_key'" in error and "NeedsKey" in error
    assert check([node("a", name="NeedsKey")], secrets={"api_key": "s3cr3t"}).ok  # 'region' has a default


def test_unregistered_node_goes_to_missing_nodes_not_errors() -> None:
    report = check(
        [node("a", ["b"]), node("b", name="Later"), node("c", name="Later", namespace="other")],
    )
    errors = [e for e in report.errors if "root" not in e]
    assert errors == []
    assert report.missing_nodes == [(NS, "Later"), ("other", "Later")]
    assert not report.ok
    messages = report.all_errors()
    assert any("'Later'" in m and "'t'" in m and "not registered" in m for m in messages), messages


def test_unregistered_node_alone() -> None:
    report = check([node("a", name="Later")])
    assert report.errors == [] and report.missing_nodes == [(NS, "Later")] and not report.ok


@pytest.mark.parametrize(
    ("store_config", "where"),
    [
        (StoreConfigModel(required_keys=["a.b"]), "store_config.required_keys"),
        (StoreConfigModel(default_values={"c.d": "x"}), "store_config.default_values"),
        (StoreConfigModel(required_keys=[""]), "store_config.required_keys"),
    ],
)
def test_store_key_containing_a_dot(store_config: StoreConfigModel, where: str) -> None:
    error = only_error(check([node("a")], store_config=store_config))
    assert error.startswith(where) and "store key" in error and "'.'" in error


@pytest.mark.parametrize("expression", ["not a cron", "61 * * * *", "0 0 * * * *", "0 0 31 2 *"])
def test_bad_cron_expression(expression: str) -> None:
    error = only_error(
        check([node("a")], triggers=[CronTrigger(expression="0 2 * * *"), CronTrigger(expression=expression)])
    )
    assert error.startswith("triggers[1]:") and repr(expression) in error


def test_bad_names() -> None:
    errors = check(
        [
            node("a b"),
        ]
    ).errors
    assert any("identifier 'a b'" in e for e in errors), errors


def test_every_problem_listed_at_once() -> None:
    nodes = [
        node("a", ["b", "ghost"], name="Echo", inputs={"text": "x", "bogus": "1"}),
        node("b", ["c"], name="Echo", inputs={"extra": "${{ a.outputs.nope }} ${{ a.broken }} ${{ zz.outputs.f }}"}),
        node("c", ["b"], name="NeedsKey"),
        node("c", name="Unregistered"),
        node("u", unites="nowhere"),
    ]
    report = check(
        nodes,
        store_config=StoreConfigModel(required_keys=["x.y"]),
        triggers=[CronTrigger(expression="bad")],
    )
    text = "\n".join(report.all_errors())
    for expected in [
        "duplicate identifier 'c'",
        "unknown node 'ghost'",
        "unites names unknown node 'nowhere'",
        "cycle",
        "unknown input 'bogus'",
        "required input 'text'",
        "secret 'api_key'",
        "'${{ a.broken }}' does not parse",
        "unknown node 'zz'",
        "store key 'x.y'",
        "triggers[0]",
        "'Unregistered' is not registered",
    ]:
        assert expected in text, (expected, text)


# --- topology facts ------------------------------------------------------------------------------


def test_fan_out_unite_barrier_and_region() -> None:
    t = topo([node("a", ["b"]), node("b", ["c"]), node("c", ["u"]), node("u", unites="a")])
    assert t.root == "a"
    assert list(t.barriers) == ["u"]
    barrier = t.barriers["u"]
    assert (barrier.over, barrier.strategy, barrier.region) == ("a", "ALL_SUCCESS", frozenset({"b", "c"}))
    assert not barrier.per_output
    assert t.direct_children("c") == []  # the unite fires on its own
    assert [b.node for b in t.member_of("b")] == ["u"]
    assert [b.node for b in t.opened_by("a")] == ["u"]
    assert t.member_of("a") == [] and t.opened_by("b") == []


def test_unite_strategy_all_done_is_kept() -> None:
    t = topo([node("a", ["b"]), node("b", ["u"]), node("u", unites="a", strategy=UnitesStrategyEnum.ALL_DONE)])
    assert t.barriers["u"].strategy == "ALL_DONE"


def test_parallel_flow_is_an_implicit_join() -> None:
    t = topo([node("splitter", ["p1", "p2"]), node("p1", ["merger"]), node("p2", ["merger"]), node("merger")])
    barrier = t.barriers["merger"]
    assert barrier.over == "splitter" and barrier.strategy == JOIN and barrier.per_output
    assert barrier.region == frozenset({"p1", "p2"})
    assert t.direct_children("p1") == [] and t.direct_children("splitter") == ["p1", "p2"]
    assert t.readable("merger") == frozenset({"splitter", "p1", "p2"})
    assert check(
        [
            node("splitter", ["p1", "p2"]),
            node("p1", ["merger"]),
            node("p2", ["merger"]),
            node("merger", inputs={"text": "${{ p1.outputs.text }}+${{ p2.outputs.other }}"}),
        ]
    ).ok


def test_join_over_nearest_common_ancestor() -> None:
    t = topo(
        [node("r", ["s"]), node("s", ["p1", "p2"]), node("p1", ["m"]), node("p2", ["x"]), node("x", ["m"]), node("m")]
    )
    assert t.barriers["m"].over == "s"
    assert t.barriers["m"].region == frozenset({"p1", "p2", "x"})


def test_nested_unites_inner_barrier_first() -> None:
    t = topo(
        [
            node("a", ["b"]),
            node("b", ["c"]),
            node("c", ["d"]),
            node("d", ["inner"]),
            node("inner", ["outer"], unites="b"),
            node("outer", ["after"], unites="a"),
            node("after"),
        ]
    )
    assert t.barriers["inner"].over == "b" and t.barriers["inner"].region == frozenset({"c", "d"})
    assert t.barriers["outer"].over == "a" and t.barriers["outer"].region == frozenset({"b", "c", "d", "inner"})
    assert t.barrier_order.index("inner") < t.barrier_order.index("outer")
    assert [b.node for b in t.member_of("c")] == ["inner", "outer"]
    assert [b.node for b in t.member_of("inner")] == ["outer"]


def test_nested_unites_order_does_not_depend_on_listing_order() -> None:
    nodes = [
        node("outer", unites="a"),
        node("inner", ["outer"], unites="b"),
        node("c", ["inner"]),
        node("b", ["c"]),
        node("a", ["b"]),
    ]
    t = topo(nodes)
    assert t.barrier_order == ["inner", "outer"]


def test_lineage_and_gathers_of_a_unite() -> None:
    t = topo(
        [
            node("r", ["a"]),
            node("a", ["b"]),
            node("b", ["c"]),
            node("c", ["u"]),
            node("u", ["after"], unites="a"),
            node("after"),
        ]
    )
    assert t.lineage["c"] == frozenset({"r", "a", "b"})
    assert t.lineage["u"] == frozenset({"r"})
    assert t.gathers["u"] == frozenset({"a", "b", "c"})
    assert t.readable("u") == frozenset({"r", "a", "b", "c"})
    assert t.readable("after") == frozenset({"r", "u"})


def test_unite_may_read_region_and_united_node() -> None:
    nodes = [
        node("a", ["b"]),
        node("b", ["u"]),
        node("u", unites="a", inputs={"text": "${{ a.outputs.text }}|${{ b.outputs.other }}"}),
    ]
    assert check(nodes).ok


def test_descendant_of_unite_may_not_read_inside_the_united_branches() -> None:
    nodes = [
        node("a", ["b"]),
        node("b", ["u"]),
        node("u", ["after"], unites="a"),
        node("after", inputs={"text": "${{ b.outputs.text }} ${{ u.outputs.text }}"}),
    ]
    error = only_error(check(nodes))
    assert "'after'" in error and "${{ b.outputs.text }}" in error
    assert "not an ancestor on this node's lineage" in error


def test_unites_node_without_incoming_edge() -> None:
    nodes = [
        node("a", ["b"]),
        node("b", ["c"]),
        node("c"),
        node("u", unites="a", inputs={"text": "${{ c.outputs.text }}"}),
    ]
    t = topo(nodes)
    assert t.root == "a"  # u has no incoming edge but is not a root
    assert t.barriers["u"].region == frozenset({"b", "c"})
    assert t.order.index("u") > t.order.index("a")
    assert t.direct_children("a") == ["b"]
    assert check(nodes).ok


def test_unite_predecessor_outside_the_united_branches() -> None:
    errors = check(
        [node("r", ["a", "x"]), node("a", ["b"]), node("b", ["u"]), node("x", ["u"]), node("u", unites="a")]
    ).errors
    assert any("'u'" in e and "'x'" in e and "not downstream" in e for e in errors), errors


def test_unite_node_with_fan_out_and_successors_on_lineage() -> None:
    t = topo([node("a", ["b"]), node("b", ["u"]), node("u", ["v"], unites="a"), node("v", ["w"]), node("w")])
    assert t.lineage["w"] == frozenset({"u", "v"})
    assert t.member_of("v") == []
