"""End-to-end flows on real workers: linear, fan-out + unite, parallel join, store, mapping."""

from __future__ import annotations

import json

from exo_celery import GraphNodeModel, StoreConfigModel, UnitesModel, UnitesStrategyEnum

from .conftest import SHARED_NAMESPACE as NS
from .support import Stack, run, uid


def states_by_id(manager, run_id):  # type: ignore[no-untyped-def]
    result: dict[str, list[dict]] = {}
    for s in run(manager.list_states(run_id)):
        result.setdefault(s["identifier"], []).append(s)
    return result


def check_and_collect(items: list[str], strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS) -> list:  # type: ignore[type-arg]
    """split -> check (Prune: 'p*' prunes, 'x*' fails, else passes) -> collect (unites split)."""
    return [
        GraphNodeModel(
            node_name="Split", identifier="split", inputs={"items": json.dumps(items)}, next_nodes=["check"]
        ),
        GraphNodeModel(
            node_name="Prune", identifier="check", inputs={"item": "${{ split.outputs.item }}"}, next_nodes=["collect"]
        ),
        GraphNodeModel(
            node_name="Collect",
            identifier="collect",
            inputs={"values": "${{ check.outputs.result }}"},
            unites=UnitesModel(identifier="split", strategy=strategy),
        ),
    ]


def test_linear_graph_maps_outputs_and_keeps_text_around_placeholders(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "hello"}, next_nodes=["b"]),
                GraphNodeModel(
                    node_name="Echo",
                    identifier="b",
                    inputs={"text": "<${{ a.outputs.text }}|${{a.outputs.text}}>"},
                    next_nodes=["c"],
                ),
                GraphNodeModel(
                    node_name="Upper", identifier="c", inputs={"item": "${{ a.outputs.text }}/${{ b.outputs.text }}"}
                ),
            ],
            secrets={},
        )
    )
    created = run(m.trigger(name, inputs={"text": "hi"}))
    assert created["status"] == "CREATED"
    done = run(m.wait(created["run_id"], timeout=60))
    assert done["status"] == "SUCCESS"
    assert done["counts"] == {"SUCCESS": 3}
    by = states_by_id(m, created["run_id"])
    assert by["a"][0]["inputs"] == {"text": "hi"}  # trigger inputs override the template's
    assert by["b"][0]["outputs"] == {"text": "<hi|hi>"}
    assert by["c"][0]["outputs"] == {"result": "HI/<HI|HI>!"}
    assert by["c"][0]["parents"] == {"a": by["a"][0]["id"], "b": by["b"][0]["id"]}


def test_fan_out_and_unite_gathers_in_fan_out_order(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    items = [f"i{n}" for n in range(12)]
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": json.dumps(items)}, next_nodes=["up"]
                ),
                GraphNodeModel(
                    node_name="Upper",
                    identifier="up",
                    inputs={"item": "${{ split.outputs.item }}"},
                    next_nodes=["collect"],
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ up.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    by = states_by_id(m, run_id)
    assert len(by["split"]) == 12 and len(by["up"]) == 12 and len(by["collect"]) == 1
    assert json.loads(by["collect"][0]["outputs"]["values"]) == [f"I{n}!" for n in range(12)]


def test_empty_fan_out_ends_branch_and_unite_still_fires(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Split", identifier="split", inputs={"items": "[]"}, next_nodes=["up"]),
                GraphNodeModel(
                    node_name="Upper",
                    identifier="up",
                    inputs={"item": "${{ split.outputs.item }}"},
                    next_nodes=["collect"],
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ up.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    by = states_by_id(m, run_id)
    assert "up" not in by
    assert by["collect"][0]["outputs"] == {"count": "0", "values": "[]"}


def test_none_is_one_empty_output(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="Nothing", identifier="n", inputs={"text": "x"}, next_nodes=["e"]),
                GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "after"}),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["counts"] == {"SUCCESS": 2}


def test_parallel_flow_merger_runs_once_per_upstream_state_with_both_inputs(stack: Stack) -> None:
    """The seed's Parallel Flow: splitter -> two processors -> merger (implicit join)."""
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split",
                    identifier="splitter",
                    inputs={"items": '["a", "b", "c"]'},
                    next_nodes=["p1", "p2"],
                ),
                GraphNodeModel(
                    node_name="Upper",
                    identifier="p1",
                    inputs={"item": "${{ splitter.outputs.item }}"},
                    next_nodes=["merger"],
                ),
                GraphNodeModel(
                    node_name="Echo",
                    identifier="p2",
                    inputs={"text": "${{ splitter.outputs.item }}"},
                    next_nodes=["merger"],
                ),
                GraphNodeModel(
                    node_name="Merge",
                    identifier="merger",
                    inputs={"a": "${{ p1.outputs.result }}", "b": "${{ p2.outputs.text }}"},
                ),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    by = states_by_id(m, run_id)
    assert sorted(s["outputs"]["merged"] for s in by["merger"]) == ["A!+a", "B!+b", "C!+c"]


def test_store_defaults_trigger_values_and_writes_on_success_only(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="StoreWrite",
                    identifier="w",
                    inputs={"key": "cursor", "value": "${{ store.start }}-next"},
                    next_nodes=["r", "f"],
                ),
                GraphNodeModel(
                    node_name="Echo", identifier="r", inputs={"text": "${{ store.cursor }} ${{ store.size }}"}
                ),
                GraphNodeModel(node_name="StoreWriteThenFail", identifier="f", inputs={"key": "bad"}),
            ],
            secrets={},
            store_config=StoreConfigModel(required_keys=["start"], default_values={"size": "10", "cursor": "0"}),
            retry_policy={"max_retries": 0},
        )
    )
    run_id = run(m.trigger(name, store={"start": "s1"}))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "FAILED"
    by = states_by_id(m, run_id)
    assert by["w"][0]["outputs"] == {"seen": "0"}
    assert by["r"][0]["outputs"] == {"text": "s1-next 10"}
    assert by["f"][0]["status"] == "ERRORED"
    store = m.repo.read_store(run_id)
    assert store == {"start": "s1", "size": "10", "cursor": "s1-next"}


def test_unite_all_done_fires_after_errors_and_run_fails(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            check_and_collect(["a", "x1", "b", "p1"], UnitesStrategyEnum.ALL_DONE),
            secrets={},
            retry_policy={"max_retries": 0},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    assert done["status"] == "FAILED"
    by = states_by_id(m, run_id)
    assert sorted(s["status"] for s in by["check"]) == ["ERRORED", "PRUNED", "SUCCESS", "SUCCESS"]
    assert json.loads(by["collect"][0]["outputs"]["values"]) == ["a", "b"]


def test_unite_all_success_never_fires_after_an_error_and_run_ends_failed(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            check_and_collect(["a", "x1", "p2"]),
            secrets={},
            retry_policy={"max_retries": 0},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "FAILED"
    assert "collect" not in states_by_id(m, run_id)


def test_unite_all_success_fires_when_branches_are_pruned(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            check_and_collect(["a", "p1", "b"]),
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    by = states_by_id(m, run_id)
    pruned = [s for s in by["check"] if s["status"] == "PRUNED"]
    assert pruned[0]["data"] == {"reason": "pruned p1"}
    assert json.loads(by["collect"][0]["outputs"]["values"]) == ["a", "b"]
