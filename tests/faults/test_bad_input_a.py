"""Issue 13 (part A), items 7 to 9: rendered inputs are capped, one name rule holds on every backend, and
text the ledger cannot hold is refused before anything is written (an ExoError, never a driver error).

One worker (EXO_MAX_INPUT_BYTES=100000) serves the module's namespace on a private PostgreSQL and Redis.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from exo_celery import (
    BaseNode,
    ConfigError,
    ExoError,
    GraphNodeModel,
    GraphValidationError,
    NotFoundError,
    Runtime,
    TriggerError,
)
from exo_celery.engine import PlanError, make_resolver, render_inputs
from exo_celery.ledger.repo import Repo

from ..support import ROOT, Proc, Stack, run, uid
from . import nodes as fault_nodes
from .harness import Ledger, register

CAP = 100_000


@dataclass
class Served:
    stack: Stack
    ns: str
    worker: Proc
    ledger: Ledger


@pytest.fixture(scope="module")
def served(module_fstack: Stack) -> Served:
    ns = uid("bad")
    register(module_fstack, ns)
    worker = module_fstack.start_worker(
        ns, "tests.faults.nodes:NODES", concurrency=2, env={"EXO_MAX_INPUT_BYTES": str(CAP)}
    )
    return Served(module_fstack, ns, worker, Ledger(module_fstack.database_url or ""))


def _nothing_written(ledger: Ledger, call: Callable[[], Any], error: type[Exception], match: str) -> None:
    before = ledger.table_counts()
    with pytest.raises(error, match=match):
        call()
    assert ledger.table_counts() == before, "a rejected call wrote something"


# -- item 7: rendered inputs are capped ------------------------------------------------------------------
def test_rendered_inputs_over_the_cap_fail_the_run_and_write_nothing_big(served: Served) -> None:
    m = served.stack.manager(served.ns)
    ten = "${{ s.outputs.text }}" * 10  # 10 x 20 kB = 200 kB, over the worker's 100 kB
    graph = [
        GraphNodeModel(node_name="Sized", identifier="s", inputs={"n": "20000"}, next_nodes=["e"]),
        GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": ten}),
    ]
    run(m.upsert_graph("amplify", graph, secrets={}, retry_policy={"max_retries": 3}))
    run_id = run(m.trigger("amplify"))["run_id"]
    assert served.ledger.wait_runs([run_id], timeout=60)[run_id] == "FAILED"
    rows = served.ledger.rows(
        "SELECT identifier, status, error, length(inputs::text) FROM exo_states WHERE run_id = %s", (run_id,)
    )
    assert [(i, s) for i, s, _, _ in rows] == [("s", "NEXT_CREATED_ERROR")], rows  # no retry, no child
    assert "over the limit of 100000 bytes (EXO_MAX_INPUT_BYTES)" in rows[0][2]
    assert max(n for *_, n in rows) < 1000

    # Under the cap (4 x 20 kB) the same shape runs.
    four = "${{ s.outputs.text }}" * 4
    graph[1] = GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": four})
    run(m.upsert_graph("amplify", graph, secrets={}))
    ok = run(m.trigger("amplify"))["run_id"]
    assert served.ledger.wait_runs([ok], timeout=60)[ok] == "SUCCESS"


def test_a_trigger_whose_root_inputs_are_over_the_cap_is_refused(served: Served) -> None:
    m = served.stack.manager(served.ns, max_input_bytes=CAP)
    graph = [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "${{ store.t }}${{ store.t }}"})]
    run(m.upsert_graph("root-cap", graph, secrets={}))
    big = {"t": "q" * 60_000}
    _nothing_written(served.ledger, lambda: m.trigger_sync("root-cap", store=big), TriggerError, "EXO_MAX_INPUT_BYTES")
    assert m.trigger_sync("root-cap", store={"t": "q" * 40_000})["status"] == "CREATED"


def test_render_inputs_stops_before_building_an_oversized_value() -> None:
    from exo_celery.engine import InputRules

    calls = []

    def resolve(ref: Any) -> str:
        calls.append(ref)
        return "x" * 1_000_000

    with pytest.raises(PlanError, match="EXO_MAX_INPUT_BYTES"):
        render_inputs({"t": "${{ a.outputs.x }}" * 200}, resolve, InputRules(max_bytes=8_000_000), "n")
    assert len(calls) == 8  # stopped at the 8th 1 MB value, not after building 200 MB
    resolver = make_resolver("n", {"a": "s1"}, {"s1": {"x": "tok=SEKRET"}}, {})
    assert render_inputs({"t": "${{ a.outputs.x }}"}, resolver, InputRules(hidden=("SEKRET",)), "n") == {"t": "tok=***"}


# -- item 8: one name rule --------------------------------------------------------------------------------
class 名前(BaseNode):  # a node class whose name is not ASCII
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


@pytest.mark.parametrize("name", ["名前", "é", "a.b", "ns\n", "a" * 129])
def test_names_outside_the_ascii_rule_are_refused_everywhere(served: Served, name: str) -> None:
    stack, ledger = served.stack, served.ledger
    with pytest.raises(ConfigError, match="ASCII letters"):
        stack.manager(name)
    with pytest.raises(ConfigError, match="ASCII letters"):
        Runtime(name, "w", fault_nodes.NODES, settings=stack.settings())
    m = stack.manager(served.ns)
    echo = {"node_name": "Echo", "identifier": "e", "inputs": {"text": "x"}}
    for graph_name, nodes in (
        (name, [echo]),
        ("g", [{**echo, "namespace": name}]),
        ("g", [{**echo, "identifier": name}]),
        ("g", [{**echo, "node_name": name}]),
    ):
        _nothing_written(
            ledger,
            lambda g=graph_name, n=nodes: m.upsert_graph_sync(g, n, {}, validation_timeout=0),  # type: ignore[misc]
            GraphValidationError,
            "ASCII",
        )


def test_a_node_class_with_a_non_ascii_name_cannot_be_served(served: Served) -> None:
    with pytest.raises(ConfigError, match="node class name '名前'"):
        Runtime(served.ns, "w", [名前], settings=served.stack.settings())


def test_the_embedded_worker_refuses_a_unicode_namespace_with_one_line(tmp_path: Path) -> None:
    stack = Stack("embedded-names", tmp_path / "home")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "exo_celery.cli",
            "worker",
            "--namespace",
            "名前",
            "--nodes",
            "tests.faults.nodes:NODES",
        ],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "namespace '名前' must be 1-128 ASCII letters" in done.stderr and "Traceback" not in done.stderr


def test_a_stored_graph_whose_root_breaks_the_rule_is_not_triggered(served: Served) -> None:
    """A template stored before the rule (its root in namespace 名前) is refused at trigger, with no run left."""
    m = served.stack.manager(served.ns)
    run(m.upsert_graph("old", [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={}))
    row = Repo(m.settings.ledger_url).load_graph(served.ns, "old")
    assert row is not None
    template = row["template"]
    template["nodes"][0]["namespace"] = "名前"
    Repo(m.settings.ledger_url).save_graph(served.ns, "old", template, row["secrets_cipher"])
    _nothing_written(served.ledger, lambda: m.trigger_sync("old"), TriggerError, "root namespace '名前'")


# -- item 9: text the ledger cannot hold ------------------------------------------------------------------
def test_text_the_ledger_cannot_hold_is_an_exo_error_and_writes_nothing(served: Served) -> None:
    m = served.stack.manager(served.ns)
    ledger = served.ledger
    echo = {"node_name": "Echo", "identifier": "e", "inputs": {"text": "${{ store.r }}"}}
    run(m.upsert_graph("texty", [echo], secrets={}))
    cases: list[tuple[Callable[[], Any], type[ExoError], str]] = [
        (
            lambda: m.upsert_graph_sync("g", [{**echo, "node_name": "Echo\x00"}], {}, validation_timeout=0),
            GraphValidationError,
            "ASCII",
        ),
        (
            lambda: m.upsert_graph_sync("g", [{**echo, "namespace": "n\x00"}], {}, validation_timeout=0),
            GraphValidationError,
            "ASCII",
        ),
        (lambda: m.list_runs_sync("texty\x00"), NotFoundError, "does not exist"),
        (lambda: m.trigger_sync("texty", store={"r": "lone \ud800"}), TriggerError, "lone surrogate"),
        (lambda: m.trigger_sync("texty", inputs={"text": "\udfff"}, store={"r": "x"}), TriggerError, "lone surrogate"),
        (lambda: m.trigger_sync("texty", store={"r\ud800": "x"}), TriggerError, "valid text"),
        (
            lambda: m.upsert_graph_sync("g", [echo], {}, store_config={"default_values": {"r": "\ud800"}}),
            GraphValidationError,
            "lone surrogate",
        ),
    ]
    for call, error, match in cases:
        _nothing_written(ledger, call, error, match)


def test_a_node_writing_a_lone_surrogate_to_the_store_errors_at_once(served: Served) -> None:
    m = served.stack.manager(served.ns)
    graph = [GraphNodeModel(node_name="StoreRaw", identifier="w", inputs={"key": "k", "codepoints": "97,55296"})]
    run(m.upsert_graph("surrogate", graph, secrets={}, retry_policy={"max_retries": 3}))
    run_id = run(m.trigger("surrogate"))["run_id"]
    assert served.ledger.wait_runs([run_id], timeout=60)[run_id] == "FAILED"
    rows = served.ledger.rows("SELECT status, error FROM exo_states WHERE run_id = %s", (run_id,))
    assert len(rows) == 1 and rows[0][0] == "ERRORED", rows  # not retried: it would fail the same way
    assert "lone surrogate" in rows[0][1]
    assert served.ledger.value("SELECT count(*) FROM exo_store WHERE run_id = %s", (run_id,)) == 0


# -- item 2, the template side: a secret typed into a template would be stored with it, in clear ----------
def test_a_template_holding_a_secret_value_is_refused(served: Served) -> None:
    m = served.stack.manager(served.ns)
    secret = f"tok-{uid('s')}"
    echo = {"node_name": "Echo", "identifier": "e", "inputs": {"text": f"Bearer {secret}"}}
    for nodes, store_config in (
        ([echo], None),
        ([{**echo, "inputs": {"text": "x"}}], {"default_values": {"k": secret}}),
    ):
        _nothing_written(
            served.ledger,
            lambda n=nodes, c=store_config: m.upsert_graph_sync("g", n, {"api_key": secret}, store_config=c),  # type: ignore[misc]
            GraphValidationError,
            "holds the value of secret 'api_key'",
        )
