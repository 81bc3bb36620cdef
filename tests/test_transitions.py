"""State transitions driven directly (no worker): lost leases, duplicates and the counters.

On PostgreSQL a branch that ends inside a region takes the one-statement path, and the region's
last branch the transaction that fires the barrier; on SQLite both take the transaction.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update

from exo_celery import GraphNodeModel, StateManager, UnitesModel
from exo_celery.engine import CompiledGraph, new_id
from exo_celery.ledger.db import get_engine
from exo_celery.ledger.repo import Repo
from exo_celery.ledger.rows import INSERT_CHUNK
from exo_celery.ledger.tables import runs, scopes, states
from exo_celery.ledger.transitions import Outcome, Transitions
from exo_celery.node import node_schema

from .nodes import Collect, Split, Upper
from .support import Stack, uid


def fan_out_and_unite_run(stack: Stack, prefix: str) -> tuple[StateManager, CompiledGraph, str]:
    """A run (not executed: no worker serves its namespace) of Split -> Upper per item -> Collect (unites)."""
    ns, name = uid(prefix), uid()
    Repo(stack.settings().ledger_url).register_nodes(
        ns, {n.__name__: node_schema(n) for n in (Split, Upper, Collect)}, "test"
    )
    m = stack.manager(ns)
    nodes = [
        GraphNodeModel(node_name="Split", identifier="split", inputs={"items": "[]"}, next_nodes=["up"]),
        GraphNodeModel(node_name="Upper", identifier="up", inputs={"item": "${{ split.outputs.item }}"}),
        GraphNodeModel(
            node_name="Collect",
            identifier="collect",
            inputs={"values": "${{ up.outputs.result }}"},
            unites=UnitesModel(identifier="split"),
        ),
    ]
    m.upsert_graph_sync(name, nodes, secrets={})
    return m, CompiledGraph.from_row(m.repo.load_graph(ns, name) or {}), m.trigger_sync(name)["run_id"]


def test_a_lost_lease_or_a_duplicate_changes_nothing_and_the_last_branch_fires_once(stack: Stack) -> None:
    url = stack.settings().ledger_url
    m, graph, run_id = fan_out_and_unite_run(stack, "tr")
    t = Transitions(url, lease_seconds=30, max_countdown=300, worker=True)
    engine = get_engine(url)

    def claim(state_id: str) -> tuple[dict[str, Any], str]:
        token = new_id()
        verdict, row = t.claim(state_id, token)
        assert verdict == "claimed" and row is not None
        return row, token

    def counters() -> tuple[int, list[int]]:
        with engine.connect() as conn:
            run_outstanding = conn.execute(select(runs.c.outstanding).where(runs.c.id == run_id)).scalar_one()
            open_scopes = list(conn.execute(select(scopes.c.outstanding).where(scopes.c.run_id == run_id)).scalars())
        return run_outstanding, open_scopes

    def set_lease(state_id: str, token: str, until: float) -> None:
        with engine.begin() as conn:
            conn.execute(update(states).where(states.c.id == state_id).values(lease_token=token, lease_until=until))

    def ok(result: str) -> Outcome:
        return Outcome("success", outputs=[{"result": result}])

    (root,) = m.repo.list_states(run_id)
    row, token = claim(root["id"])
    fanned = Outcome("success", outputs=[{"item": i} for i in ("a", "b", "c")])
    assert t.complete(graph, row, token, fanned).status == "SUCCESS"
    ups = [s for s in m.repo.list_states(run_id) if s["identifier"] == "up"]
    assert len(ups) == 3
    assert counters() == (1, [3])  # the run counts the open scope once; the scope its three branches

    # Another worker took over the first branch: the old worker's completion changes nothing.
    lost, lost_token = claim(ups[0]["id"])
    set_lease(ups[0]["id"], "0" * 32, time.time() + 30)
    assert t.complete(graph, lost, lost_token, ok("A")).status is None
    assert m.repo.get_state(ups[0]["id"])["status"] == "QUEUED"
    assert counters() == (1, [3])

    # A branch completes; a duplicate of that completion changes nothing.
    second, second_token = claim(ups[1]["id"])
    assert t.complete(graph, second, second_token, ok("B")).status == "SUCCESS"
    assert t.complete(graph, second, second_token, ok("B")).status is None
    assert counters() == (1, [2])

    third, third_token = claim(ups[2]["id"])
    assert t.complete(graph, third, third_token, ok("C")).status == "SUCCESS"
    assert counters() == (1, [1])

    # The taken-over branch's lease expires; re-claimed, it is the last branch and fires the unite.
    set_lease(ups[0]["id"], "0" * 32, 0.0)
    first, first_token = claim(ups[0]["id"])
    done = t.complete(graph, first, first_token, ok("A"))
    assert done.status == "SUCCESS" and [c[1] for c in done.created] == ["collect"]
    assert counters() == (1, [0])  # the scope closed, the unite state is counted instead
    assert t.complete(graph, first, first_token, ok("A")).status is None

    unite, unite_token = claim(done.created[0][0])
    assert t.complete(graph, unite, unite_token, Outcome("success", outputs=[{"count": "3", "values": "[]"}])).status
    assert counters() == (0, [0])
    assert m.get_run_sync(run_id)["status"] == "SUCCESS"
    assert sum(1 for s in m.repo.list_states(run_id) if s["identifier"] == "collect") == 1


def test_a_completion_creating_states_outside_regions_is_all_or_nothing(stack: Stack) -> None:
    """A hop (PostgreSQL: one statement finishing the state, inserting its children and moving the run)."""
    url = stack.settings().ledger_url
    ns, name = uid("hop"), uid()
    Repo(url).register_nodes(ns, {n.__name__: node_schema(n) for n in (Split, Upper)}, "test")
    m = stack.manager(ns)
    nodes = [
        GraphNodeModel(node_name="Split", identifier="split", inputs={"items": "[]"}, next_nodes=["up"]),
        GraphNodeModel(node_name="Upper", identifier="up", inputs={"item": "${{ split.outputs.item }}"}),
    ]
    m.upsert_graph_sync(name, nodes, secrets={})
    graph = CompiledGraph.from_row(m.repo.load_graph(ns, name) or {})
    run_id = m.trigger_sync(name)["run_id"]
    t = Transitions(url, lease_seconds=30, max_countdown=300, worker=True)
    (root,) = m.repo.list_states(run_id)
    token = new_id()
    verdict, row = t.claim(root["id"], token)
    assert verdict == "claimed" and row is not None
    fanned = Outcome("success", outputs=[{"item": i} for i in ("a", "b", "c")])

    assert t.complete(graph, row, "0" * 32, fanned).status is None  # not our lease: nothing changes
    assert [s["identifier"] for s in m.repo.list_states(run_id)] == ["split"]

    done = t.complete(graph, row, token, fanned)
    assert done.status == "SUCCESS" and sorted(c[1] for c in done.created) == ["up"] * 3
    assert len(done.dispatches) == 3
    assert t.complete(graph, row, token, fanned).status is None  # a duplicate changes nothing
    listed = m.repo.list_states(run_id)
    assert sorted((s["identifier"], s["status"]) for s in listed) == [
        ("split", "SUCCESS"),
        ("split", "SUCCESS"),
        ("split", "SUCCESS"),
        ("up", "QUEUED"),
        ("up", "QUEUED"),
        ("up", "QUEUED"),
    ]
    assert sorted(s["inputs"]["item"] for s in listed if s["identifier"] == "up") == ["a", "b", "c"]
    with get_engine(url).connect() as conn:
        assert conn.execute(select(runs.c.outstanding).where(runs.c.id == run_id)).scalar_one() == 3


def test_a_fan_out_wider_than_an_insert_chunk_stores_every_branch_in_order(stack: Stack) -> None:
    """Rows go in INSERT_CHUNK at a time (PostgreSQL: one JSON parameter per chunk); none is lost or mixed up."""
    url = stack.settings().ledger_url
    m, graph, run_id = fan_out_and_unite_run(stack, "wide")
    t = Transitions(url, lease_seconds=30, max_countdown=300, worker=True)
    width = INSERT_CHUNK + 3
    (root,) = m.repo.list_states(run_id)
    token = new_id()
    verdict, row = t.claim(root["id"], token)
    assert verdict == "claimed" and row is not None
    items = [f"i{n}\u00e9\"'" for n in range(width)]  # quotes and non-ASCII survive the JSON round trip
    done = t.complete(graph, row, token, Outcome("success", outputs=[{"item": i} for i in items]))
    assert done.status == "SUCCESS" and len(done.dispatches) == width
    with get_engine(url).connect() as conn:
        listed = conn.execute(
            select(states.c.identifier, states.c.status, states.c.branch, states.c.inputs, states.c.outputs)
            .where(states.c.run_id == run_id)
            .order_by(states.c.identifier, states.c.branch)
        ).all()
        assert conn.execute(select(scopes.c.outstanding).where(scopes.c.run_id == run_id)).scalar_one() == width
    fans = [r for r in listed if r.identifier == "split"]
    ups = [r for r in listed if r.identifier == "up"]
    assert [r.outputs["item"] for r in fans] == items and {r.status for r in fans} == {"SUCCESS"}
    assert [r.inputs["item"] for r in ups] == items and {r.status for r in ups} == {"QUEUED"}
    up_ids = {s["id"] for s in m.repo.list_states(run_id) if s["identifier"] == "up"}
    assert {d.state_id for d in done.dispatches} == up_ids
