"""Issue 2 rules that cross layers: secrets, bad input, races, registration, routing, compatibility."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
import redis
from pydantic import BaseModel
from sqlalchemy import create_engine, func, select, text

from exo_celery import (
    ExoError,
    GraphNodeModel,
    GraphValidationError,
    NotFoundError,
    StoreConfigModel,
    TriggerError,
    UnitesModel,
)
from exo_celery.ledger.repo import Repo
from exo_celery.ledger.tables import graphs, runs, states
from exo_celery.node import node_schema

from .conftest import SHARED_NAMESPACE as NS
from .nodes import Echo
from .support import POSTGRES_ADMIN_URL, REDIS_URL, Stack, run, uid

SECRET = "sk-live-7f3a9c1e5b2d"


def count_rows(stack: Stack) -> dict[str, int]:
    engine = create_engine(stack.settings().ledger_url)
    with engine.connect() as conn:
        result = {t.name: conn.execute(select(func.count()).select_from(t)).scalar() for t in (graphs, runs, states)}
    engine.dispose()
    return result


def test_secrets_reach_the_node_and_appear_nowhere_else(pg_stack: Stack) -> None:
    m = pg_stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(node_name="UseSecret", identifier="ok", inputs={"mode": "plain"}, next_nodes=["leak"]),
                GraphNodeModel(node_name="UseSecret", identifier="leak", inputs={"mode": "leak-error"}, next_nodes=[]),
            ],
            secrets={"api_key": SECRET},
            retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "FAILED"
    listed = run(m.list_states(run_id))
    by = {s["identifier"]: s for s in listed if s["status"] != "RETRY_CREATED"}
    assert by["ok"]["outputs"] == {"length": str(len(SECRET))}  # the node saw the real value
    assert by["leak"]["status"] == "ERRORED" and "***" in by["leak"]["error"]
    assert SECRET not in json.dumps(listed)
    graph = run(m.get_graph(name))
    assert graph["secrets"] == {"api_key": True} and SECRET not in json.dumps(graph)

    engine = create_engine(pg_stack.settings().ledger_url)
    with engine.connect() as conn:
        for table in ("exo_graphs", "exo_runs", "exo_states", "exo_store", "exo_scopes", "exo_nodes"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                assert SECRET not in repr(tuple(row)), table
    engine.dispose()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.keys("*"):
        kind = client.type(key).decode()
        values = {
            "list": lambda k: client.lrange(k, 0, -1),
            "hash": lambda k: list(client.hgetall(k).items()),
            "zset": lambda k: client.zrange(k, 0, -1),
            "string": lambda k: [client.get(k)],
            "set": lambda k: list(client.smembers(k)),
        }.get(kind, lambda k: [])(key)
        assert SECRET.encode() not in repr(values).encode(), key
    for log in pg_stack.home.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log


def test_bad_templates_list_every_problem_and_write_nothing(stack: Stack) -> None:
    m = stack.manager(NS)
    before = count_rows(stack)
    with pytest.raises(GraphValidationError) as info:
        run(
            m.upsert_graph(
                uid(),
                [
                    GraphNodeModel(
                        node_name="Echo", identifier="a", inputs={"text": "${{ b.outputs.text }}"}, next_nodes=["b"]
                    ),
                    GraphNodeModel(
                        node_name="Echo", identifier="b", inputs={"text": "${{ a.outputs.nope }}"}, next_nodes=["a"]
                    ),
                    GraphNodeModel(node_name="Echo", identifier="c", inputs={}, next_nodes=["zzz"]),
                ],
                secrets={},
                store_config=StoreConfigModel(default_values={"a.b": "x"}),
            )
        )
    message = str(info.value)
    assert "next_nodes names unknown node 'zzz'" in message
    assert "store key 'a.b'" in message
    assert len(info.value.errors) >= 2
    with pytest.raises(GraphValidationError, match="input 'text' of Echo is missing"):
        run(m.upsert_graph(uid(), [GraphNodeModel(node_name="Echo", identifier="a", inputs={})], secrets={}))
    with pytest.raises(GraphValidationError, match="secret 'api_key' needed by UseSecret"):
        run(
            m.upsert_graph(
                uid(), [GraphNodeModel(node_name="UseSecret", identifier="a", inputs={"mode": "x"})], secrets={}
            )
        )
    with pytest.raises(GraphValidationError, match=r"NoSuchNode.*not registered"):
        run(
            m.upsert_graph(
                uid(), [GraphNodeModel(node_name="NoSuchNode", identifier="a")], secrets={}, validation_timeout=0.5
            )
        )
    assert count_rows(stack) == before


def test_trigger_uses_the_version_another_client_just_stored(stack: Stack) -> None:
    """The trigger's one-statement insert names the version its client saw last; a newer one wins."""
    first, second = stack.manager(NS), stack.manager(NS)
    name = uid()
    nodes = [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "v1"})]
    run(first.upsert_graph(name, nodes, secrets={}))
    before = run(first.trigger(name))["run_id"]
    run(second.upsert_graph(name, [nodes[0].model_copy(update={"inputs": {"text": "v2"}})], secrets={}))
    after = run(first.trigger(name))["run_id"]
    assert [first.repo.get_run(r)["graph_version"] for r in (before, after)] == [1, 2]
    assert [s["inputs"] for s in first.repo.list_states(after)] == [{"text": "v2"}]


def test_trigger_survives_the_server_dropping_its_pooled_connections(fresh_pg: Stack) -> None:
    """The trigger's pool does not ping on checkout; a dropped connection is retried once, not doubled."""
    m = fresh_pg.manager(NS)
    Repo(m.settings.ledger_url).register_nodes(NS, {"Echo": node_schema(Echo)}, "test")
    name = uid()
    run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "x"})], secrets={}))
    run(m.trigger(name))
    database = str(fresh_pg.database_url).rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()
    assert dropped and dropped[0] >= 1
    run(m.trigger(name))
    engine = create_engine(str(fresh_pg.database_url).replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 2
        assert conn.execute(select(func.count()).select_from(states)).scalar() == 2
    engine.dispose()


def test_bad_trigger_calls_raise_and_write_nothing(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "${{ store.k }}"})],
            secrets={},
            store_config=StoreConfigModel(required_keys=["k"]),
        )
    )
    before = count_rows(stack)
    with pytest.raises(NotFoundError, match="graph 'missing-graph' does not exist"):
        run(m.trigger("missing-graph"))
    with pytest.raises(TriggerError, match=r"required store key\(s\) missing: \['k'\]"):
        run(m.trigger(name))
    with pytest.raises(TriggerError, match="store 'k' must be a string"):
        run(m.trigger(name, store={"k": 5}))  # type: ignore[dict-item]
    with pytest.raises(TriggerError, match="start_delay"):
        run(m.trigger(name, store={"k": "v"}, start_delay=-1))
    with pytest.raises(ExoError):
        run(m.get_run("no-such-run"))
    assert count_rows(stack) == before


def test_trigger_drops_inputs_the_root_does_not_take_and_responses_have_exosphere_shapes(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    m = stack.manager(NS)
    name = uid()
    graph = run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "t"})],
            {"api_key": SECRET},
            triggers=[{"type": "CRON", "value": {"expression": "0 9 * * 1-5"}}],
            polling_interval=1,  # the SDK's argument
        )
    )
    exosphere_keys = {"nodes", "secrets", "retry_policy", "store_config", "triggers", "created_at", "updated_at"}
    assert exosphere_keys | {"validation_status", "validation_errors"} <= set(graph)
    assert graph["secrets"] == {"api_key": True} and graph["validation_status"] == "VALID"
    assert graph["triggers"] == [{"type": "CRON", "value": {"expression": "0 9 * * 1-5", "timezone": "UTC"}}]
    assert graph["created_at"] == graph["updated_at"]
    again = run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "t"})], {}))
    fetched = run(m.get_graph(name))
    assert again["created_at"] == fetched["created_at"] == graph["created_at"] < fetched["updated_at"]
    assert fetched["updated_at"] == again["updated_at"] and fetched["secrets"] == {}

    with caplog.at_level("WARNING", logger="exo_celery.client"):
        created = run(m.trigger(name, inputs={"text": "hi", "user_id": "123"}))
    assert {"status", "run_id"} <= set(created) and created["status"] == "CREATED"
    assert created["dropped_inputs"] == ["user_id"]
    assert any("user_id" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert run(m.wait(created["run_id"], timeout=60))["status"] == "SUCCESS"
    states = run(m.list_states(created["run_id"]))
    assert states[0]["inputs"] == {"text": "hi"} and states[0]["outputs"] == {"text": "hi"}
    assert run(m.trigger(name))["dropped_inputs"] == []


def test_unite_race_200_branches_on_two_worker_processes_gives_one_unite(fresh_pg: Stack) -> None:
    ns = uid("race")
    fresh_pg.start_worker(ns, concurrency=2)
    fresh_pg.start_worker(ns, concurrency=2)
    m = fresh_pg.manager(ns)
    name = uid()
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split",
                    identifier="split",
                    inputs={"items": json.dumps(list(range(200)))},
                    next_nodes=["echo"],
                ),
                GraphNodeModel(
                    node_name="Echo",
                    identifier="echo",
                    inputs={"text": "${{ split.outputs.item }}"},
                    next_nodes=["collect"],
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ echo.outputs.text }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
        )
    )
    run_ids = [run(m.trigger(name))["run_id"] for _ in range(3)]
    for run_id in run_ids:
        assert run(m.wait(run_id, timeout=120))["status"] == "SUCCESS"
        listed = run(m.list_states(run_id))
        unites = [s for s in listed if s["identifier"] == "collect"]
        assert len(unites) == 1
        assert json.loads(unites[0]["outputs"]["values"]) == [str(i) for i in range(200)]
        assert len([s for s in listed if s["identifier"] == "echo"]) == 200


def test_upsert_waits_for_a_starting_worker_to_register_its_nodes(fresh_pg: Stack) -> None:
    ns = uid("late")
    m = fresh_pg.manager(ns)
    fresh_pg.start_worker(ns, wait=False)
    started = time.monotonic()
    graph = run(
        m.upsert_graph(
            uid(),
            [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "x"})],
            secrets={},
            validation_timeout=60,
        )
    )
    assert graph["validation_status"] == "VALID"
    assert time.monotonic() - started < 60


def test_exosphere_json_body_and_duck_typed_nodes(stack: Stack) -> None:
    m = stack.manager(NS)
    name = uid()
    body = {
        "secrets": {},
        "nodes": [
            {
                "node_name": "Split",
                "namespace": NS,
                "identifier": "s",
                "inputs": {"items": '["x", "y"]'},
                "next_nodes": ["u"],
            },
            {
                "node_name": "Upper",
                "namespace": NS,
                "identifier": "u",
                "inputs": {"item": "${{ s.outputs.item }}"},
                "next_nodes": ["c"],
            },
            {
                "node_name": "Collect",
                "namespace": NS,
                "identifier": "c",
                "inputs": {"values": "${{ u.outputs.result }}"},
                "unites": {"identifier": "s", "strategy": "ALL_DONE"},
            },
        ],
        "retry_policy": {"max_retries": 2, "strategy": "LINEAR_FULL_JITTER", "backoff_factor": 100},
        "store_config": {"required_keys": [], "default_values": {"a": "b"}},
        "triggers": [{"type": "CRON", "value": {"expression": "0 9 * * 1-5"}}],
    }
    graph = run(m.upsert_graph_json(name, body))
    assert graph["retry_policy"]["strategy"] == "LINEAR_FULL_JITTER"
    assert graph["triggers"] == [{"type": "CRON", "value": {"expression": "0 9 * * 1-5", "timezone": "UTC"}}]
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"


def test_exosphere_shaped_classes_are_accepted() -> None:
    from exo_celery.node import is_node_class

    class Foreign:  # not a subclass of exo_celery.BaseNode
        class Inputs(BaseModel):
            a: str

        class Outputs(BaseModel):
            b: str

        class Secrets(BaseModel):
            pass

        async def execute(self) -> object:
            return self.Outputs(b="x")

    assert is_node_class(Foreign)


def test_messages_carry_ids_only_on_the_node_queue(fresh_pg: Stack) -> None:
    ns = uid("q")
    m = fresh_pg.manager(ns)
    from exo_celery.ledger.repo import Repo
    from exo_celery.node import node_schema

    from . import nodes

    Repo(fresh_pg.settings().ledger_url).register_nodes(ns, {"Echo": node_schema(nodes.Echo)}, "test")
    name = uid()
    run(
        m.upsert_graph(
            name, [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "private-value-42"})], secrets={}
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    prefix = fresh_pg.extra["EXO_QUEUE_PREFIX"]
    client = redis.Redis.from_url(REDIS_URL)
    raw = client.lrange(f"{prefix}.{ns}.Echo", 0, -1)
    assert len(raw) == 1  # no worker serves this namespace yet: the message waits on its node's queue
    message = json.loads(raw[0])
    assert message["headers"]["task"] == f"{prefix}.{ns}.Echo"
    assert message["headers"]["argsrepr"].count(run_id) == 1
    assert "private-value-42" not in raw[0].decode()
    fresh_pg.start_worker(ns)
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
