"""Every runnable example of Exosphere's docs, run on exo_celery with only its import line changed.

The examples are kept in tests/compat/examples/ (see ..docs_examples; test_examples_match_docs.py
checks them against the pages). Names a page uses without defining (an elided node, a
`state_manager` from an earlier block) come from the harness here, as a reader's notebook would
have them; each such node is the smallest one that follows the page's field names. Every test
gets its own PostgreSQL database and Redis queue prefix, so the pages' shared names (namespace
"MyProject", node "DataProcessorNode" with different fields on different pages) do not collide.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, create_model

from exo_celery import (
    BaseNode,
    CronTrigger,
    GraphNodeModel,
    GraphValidationError,
    PruneSignal,
    ReQueueAfterSignal,
    Runtime,
    StateManager,
)
from exo_celery.node import node_schema

from ...support import Stack
from ..docs_examples import example

NS = "MyProject"
_threads: list[threading.Thread] = []  # the harness's background threads running examples and runtimes


@pytest.fixture
def docs_env(fresh_pg: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The examples configure nothing: a private ledger and broker reach them through EXO_* variables."""
    for key, value in fresh_pg.env.items():
        if key.startswith("EXO_"):
            monkeypatch.setenv(key, value)
    with stopping_runtimes():
        yield fresh_pg


def child_pids() -> set[int]:
    """Live child processes of this process (Runtime._start forks its worker with os.fork)."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


@contextmanager
def stopping_runtimes() -> Iterator[None]:
    """Stop the worker processes that runtimes started in this block (Runtime._start's children).

    A stopped `start()` returns, so an example's next line may start another runtime (the
    horizontal-scaling page starts two in a row): stop children until the harness's threads end.
    """
    before = child_pids()
    try:
        yield
    finally:
        deadline = time.monotonic() + 90
        while True:
            started = child_pids() - before
            _stop(started)
            for thread in _threads:
                thread.join(1.0)
            if (not started and not any(t.is_alive() for t in _threads)) or time.monotonic() > deadline:
                break
        _threads.clear()


def _stop(pids: set[int]) -> None:
    """SIGTERM (Celery's warm shutdown), then the worker's whole process group is killed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pids & child_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:  # the worker leads a process group with its pool: none of it may outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


# -- running an example -----------------------------------------------------------------------------------
def _code(name: str, top_level_await: bool = False) -> Any:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_level_await else 0
    return compile(example(name), f"examples/{name}", "exec", flags=flags)


def run_example(name: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute an example as a module would (`__name__` from the context, default not '__main__')."""
    namespace = {"__name__": f"example_{name}", **(context or {})}
    exec(_code(name), namespace)
    return namespace


async def run_async_example(name: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute an example written for a notebook (top-level `await`), as Jupyter does."""
    namespace = {"__name__": f"example_{name}", **(context or {})}
    result = eval(_code(name, top_level_await=True), namespace)
    if asyncio.iscoroutine(result):
        await result
    return namespace


def run_in_background(name: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute an example that blocks (a Runtime's start()) in a thread; returns its namespace as it fills."""
    namespace = {"__name__": f"example_{name}", **(context or {})}
    _threads.append(threading.Thread(target=exec, args=(_code(name), namespace), daemon=True))
    _threads[-1].start()
    return namespace


def definitions(name: str) -> dict[str, Any]:
    """What a page's earlier block defines (its imports and classes), without running its calls."""
    tree = ast.parse(example(name))
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef))]
    namespace: dict[str, Any] = {"__name__": f"example_{name}"}
    exec(compile(tree, f"examples/{name}", "exec"), namespace)
    return namespace


# -- the smallest nodes the pages elide --------------------------------------------------------------------
def make_node(
    name: str, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ("result",), fan_out: int = 0
) -> type:
    """A node called `name` with these string fields; each output names the node and its inputs."""
    inputs_model = create_model("Inputs", **{f: (str, ...) for f in inputs})  # type: ignore[call-overload]
    outputs_model = create_model("Outputs", **{f: (str, ...) for f in outputs})  # type: ignore[call-overload]

    async def execute(self: Any) -> Any:
        seen = ",".join(getattr(self.inputs, f) for f in inputs)
        items = [self.Outputs(**{f: f"{name}({seen})#{i}" for f in outputs}) for i in range(max(fan_out, 1))]
        return items if fan_out else items[0]

    secrets_model = create_model("Secrets")
    return type(
        name,
        (BaseNode,),
        {"Inputs": inputs_model, "Outputs": outputs_model, "Secrets": secrets_model, "execute": execute},
    )


def serve(*nodes: type, namespace: str = NS) -> None:
    """Run a runtime for the nodes in the background (stopped by the docs_env fixture)."""
    runtime = Runtime(namespace, "docs-harness", list(nodes), workers=1)
    _threads.append(threading.Thread(target=runtime.start, daemon=True))
    _threads[-1].start()


def manager(namespace: str = NS, **options: Any) -> StateManager:
    return StateManager(namespace, **options)


async def finish(m: StateManager, created: dict[str, Any], status: str = "SUCCESS") -> list[dict[str, Any]]:
    """Wait for the run; returns its states."""
    ended = (await m.wait(created["run_id"], timeout=90))["status"]
    states = await m.list_states(created["run_id"])
    assert ended == status, [(s["identifier"], s["status"], s["error"]) for s in states]
    return states


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll the ledger (through `check`) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not met in the ledger")


def outputs_of(states: list[dict[str, Any]], identifier: str) -> list[Any]:
    return [s["outputs"] for s in states if s["identifier"] == identifier and s["status"] == "SUCCESS"]


# -- concepts (seed page 000) ------------------------------------------------------------------------------
def test_concepts_fanout_node_and_graph(docs_env: Stack) -> None:
    page = run_example("concepts__b0.py", {"json": json})  # the page uses json without importing it
    serve(
        page["DataSplitterNode"],
        make_node("DataProcessorNode", ("chunk",), ("processed_data",)),
        make_node("ResultMergerNode", ("result_1", "result_2", "result_3"), ("merged",)),
    )

    async def scenario() -> None:
        m = manager()
        await m.upsert_graph_json("fanout", json.loads(example("concepts__b1.json")))
        states = await finish(m, await m.trigger("fanout", inputs={"data": json.dumps(list(range(250)))}))
        assert len(outputs_of(states, "data_splitter")) == 3  # 250 items in chunks of 100
        assert all(len(outputs_of(states, f"processor_{i}")) == 3 for i in (1, 2, 3))
        assert len(outputs_of(states, "result_merger")) == 3  # once per chunk, after its three processors

    asyncio.run(scenario())


def test_concepts_data_flows(docs_env: Stack) -> None:
    names = [
        "DataLoaderNode",
        "DataProcessorNode",
        "DataValidatorNode",
        "DataSplitterNode",
        "ResultMergerNode",
        "DataAnalyzerNode",
        "TextProcessorNode",
        "ImageProcessorNode",
        "ResultCollectorNode",
    ]
    serve(*(make_node(n) for n in names))

    async def scenario() -> None:
        m = manager()
        for block, flow in [(12, "linear"), (13, "parallel"), (14, "conditional"), (15, "fanout-flow")]:
            await m.upsert_graph_json(flow, json.loads(example(f"concepts__b{block}.json")))
        for flow in ("linear", "parallel", "conditional", "fanout-flow"):
            await finish(m, await m.trigger(flow))

    asyncio.run(scenario())


def test_concepts_horizontal_scaling(docs_env: Stack) -> None:
    run_in_background("concepts__b20.py", {"Runtime": Runtime, "MyNode": make_node("MyNode", ("text",))})

    async def scenario() -> None:
        m = manager()
        await m.upsert_graph("scale", [GraphNodeModel(node_name="MyNode", identifier="a", inputs={"text": "t"})], {})
        states = await finish(m, await m.trigger("scale"))
        assert outputs_of(states, "a") == [{"result": "MyNode(t)#0"}]

    asyncio.run(scenario())


# -- getting started (seed page 004) -----------------------------------------------------------------------
async def _sample_run() -> None:
    m = manager()
    node = GraphNodeModel(node_name="SampleNode", identifier="s", inputs={"name": "n", "data": "d"})
    await m.upsert_graph("sample", [node], {})
    states = await finish(m, await m.trigger("sample", inputs={"data": "xyz"}))
    assert outputs_of(states, "s") == [{"message": "success", "processed_data": "completed:xyz"}]


def test_getting_started_quick_start_blocks_and_serves(docs_env: Stack) -> None:
    run_in_background("getting-started__b3.py")  # Runtime(...).start() blocks, as on the page
    asyncio.run(_sample_run())


def test_getting_started_background_thread(docs_env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    page = run_example("getting-started__b4.py", definitions("getting-started__b3.py"))
    assert page["thread"].is_alive() and "Runtime is running in the background!" in capsys.readouterr().out
    asyncio.run(_sample_run())


def test_getting_started_asyncio_task(docs_env: Stack) -> None:
    async def scenario() -> None:
        page = await run_async_example("getting-started__b5.py", definitions("getting-started__b3.py"))
        task = page["runtime_task"]
        assert isinstance(task, asyncio.Task) and not task.done()
        await _sample_run()
        task.cancel()  # "To stop the runtime later"
        with pytest.raises(asyncio.CancelledError):
            await task

    before = child_pids()
    asyncio.run(scenario())
    assert child_pids() <= before  # cancelling stopped (and reaped) the worker


def test_getting_started_production_script(docs_env: Stack) -> None:
    run_in_background("getting-started__b6.py", {**definitions("getting-started__b3.py"), "__name__": "__main__"})
    asyncio.run(_sample_run())


def test_getting_started_data_model(docs_env: Stack) -> None:
    page = run_example("getting-started__b7.py", {"BaseNode": BaseNode, "BaseModel": BaseModel})
    Runtime(NS, "data-model", [page["MyNode"]]).register()
    assert node_schema(page["MyNode"])["required_secrets"] == ["api_key", "database_url"]
    node = GraphNodeModel(node_name="MyNode", identifier="m", inputs={"user_id": "u", "config": "{}"})
    with pytest.raises(GraphValidationError, match="secret 'api_key' needed by MyNode"):
        asyncio.run(manager(validation_timeout=0).upsert_graph("model", [node], {}))
    graph = asyncio.run(manager().upsert_graph("model", [node], {"api_key": "k", "database_url": "postgres://x"}))
    assert graph["secrets"] == {"api_key": True, "database_url": True}


# -- create graph, graph validation -------------------------------------------------------------------------
UNSET = {"EXOSPHERE_STATE_MANAGER_URI": None, "EXOSPHERE_API_KEY": None}  # the pages' unset configuration


def test_create_graph_sdk_and_json(docs_env: Stack) -> None:
    serve(make_node("DataLoaderNode", ("source",), ("data",)), make_node("DataProcessorNode", ("data",)))
    page = run_example("create-graph__b1.py", UNSET)

    async def scenario() -> None:
        result = await page["create_graph"]()
        assert result["validation_status"] == "VALID" and result["secrets"] == {"api_key": True}
        m = manager()
        states = await finish(m, await m.trigger("my-workflow", inputs={"source": "s3"}))
        assert outputs_of(states, "processor") == [{"result": "DataProcessorNode(DataLoaderNode(s3)#0)#0"}]
        await m.upsert_graph_json("basic", json.loads(example("create-graph__b0.json")))
        await finish(m, await m.trigger("basic"))

    asyncio.run(scenario())


def test_graph_validation(docs_env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    Runtime(NS, "validation", [make_node("DataLoaderNode", ("source",), ("data",))]).register()
    good = [GraphNodeModel(node_name="DataLoaderNode", identifier="loader", inputs={"source": "x"})]
    bad = [GraphNodeModel(node_name="DataProcessorNode", identifier="processor", inputs={"data": "x"})]
    context = {"state_manager": manager(validation_timeout=0), "secrets": {}, "ValidationError": GraphValidationError}

    page = run_example("graph-validation__b0.py", {**context, "graph_nodes": good})
    assert asyncio.run(page["create_graph"]())["validation_status"] == "VALID"
    assert "Graph created successfully!" in capsys.readouterr().out
    page = run_example("graph-validation__b0.py", {**context, "graph_nodes": bad})
    assert asyncio.run(page["create_graph"]()) is None
    assert "Validation failed: " in capsys.readouterr().out


# -- retry policy -------------------------------------------------------------------------------------------
def test_retry_policy_models_and_json(docs_env: Stack) -> None:
    serve(make_node("ResilientNode", ("data",)), make_node("MyNode", ("data",)))
    page = run_example("retry-policy__b8.py")
    configurations = run_example("retry-policy__b9.py", page)  # it rebinds `retry_policy` three times
    assert configurations["retry_policy"].compute_delay(3) == 5000  # the last: FIXED 5 s, capped at 5 s

    async def scenario() -> None:
        await page["create_graph_with_retry_policy"]()
        m = manager()
        graph = await m.get_graph("resilient-workflow")
        assert graph["retry_policy"] == {
            "max_retries": 5,
            "strategy": "EXPONENTIAL_FULL_JITTER",
            "backoff_factor": 1000,
            "exponent": 2,
            "max_delay": 30000,
        }
        await finish(m, await m.trigger("resilient-workflow"))
        graph = await m.upsert_graph_json("retry-json", json.loads(example("retry-policy__b0.json")))
        assert graph["retry_policy"]["max_delay"] == 3600000
        await finish(m, await m.trigger("retry-json"))

    asyncio.run(scenario())


# -- signals (changed beyond the import: see each file's `# changed:` lines) --------------------------------
SIGNALS_CONTEXT = {
    "BaseNode": BaseNode,
    "BaseModel": BaseModel,
    "PruneSignal": PruneSignal,
    "ReQueueAfterSignal": ReQueueAfterSignal,
    "datetime": datetime,
    "timedelta": timedelta,
}


async def _requeued(m: StateManager, run_id: str, seconds: float) -> None:
    """The state went back to CREATED, due about `seconds` later, its retry count unchanged."""

    def waits(state: dict[str, Any]) -> float:
        return (datetime.fromisoformat(state["due_at"]) - datetime.fromisoformat(state["updated_at"])).total_seconds()

    async def check() -> Any:
        (state,) = await m.list_states(run_id)
        # Requeued: waiting again (CREATED, or QUEUED with a Celery countdown when the delay is short enough).
        return state if state["status"] in ("CREATED", "QUEUED") and waits(state) > seconds / 2 else None

    try:
        state = await until(check)
    except TimeoutError:
        raise AssertionError(await m.list_states(run_id)) from None
    assert state["retry_count"] == 0 and abs(waits(state) - seconds) < 5 and state["outputs"] is None, state
    await m.cancel(run_id)


def test_signals_prune_and_requeue(docs_env: Stack) -> None:
    prune = run_example("signals__b1.py", SIGNALS_CONTEXT)
    requeue = run_example("signals__b2.py", SIGNALS_CONTEXT)
    serve(prune["MyNode"], requeue["RetryNode"])

    async def scenario() -> None:
        m = manager()
        await m.upsert_graph("prune", [GraphNodeModel(node_name="MyNode", identifier="n", inputs={"data": "x"})], {})
        node = GraphNodeModel(node_name="RetryNode", identifier="r", inputs={"retry_count": "0", "data": "d"})
        await m.upsert_graph("requeue", [node], {})
        (state,) = await finish(m, await m.trigger("prune", inputs={"data": "invalid"}))
        assert state["status"] == "PRUNED"
        assert state["data"] == {"reason": "invalid_data", "error": "Data validation failed"}
        assert outputs_of(await finish(m, await m.trigger("prune", inputs={"data": "ok"})), "n") == [
            {"result": "processed"}
        ]
        assert outputs_of(await finish(m, await m.trigger("requeue", inputs={"retry_count": "3"})), "r") == [
            {"result": "completed"}
        ]
        await _requeued(m, (await m.trigger("requeue"))["run_id"], 5 * 60)

    asyncio.run(scenario())


def test_signals_conditional_pruning_and_polling(docs_env: Stack) -> None:
    validation = run_example("signals__b3.py", SIGNALS_CONTEXT)
    polling = run_example("signals__b4.py", SIGNALS_CONTEXT)
    serve(validation["ValidationNode"], polling["PollingNode"])

    async def scenario() -> None:
        m = manager()
        node = GraphNodeModel(node_name="ValidationNode", identifier="v", inputs={"user_id": "u1", "data": "{}"})
        await m.upsert_graph("validate", [node], {})
        await m.upsert_graph(
            "poll", [GraphNodeModel(node_name="PollingNode", identifier="p", inputs={"job_id": "j"})], {}
        )
        assert outputs_of(await finish(m, await m.trigger("validate")), "v") == [{"validated": True}]
        (state,) = await finish(m, await m.trigger("validate", inputs={"user_id": "banned"}))
        assert state["status"] == "PRUNED" and state["data"]["reason"] == "invalid_user"
        datetime.fromisoformat(state["data"]["timestamp"])
        assert outputs_of(await finish(m, await m.trigger("poll", inputs={"job_id": "done-1"})), "p") == [
            {"result": "result of done-1"}
        ]
        await _requeued(m, (await m.trigger("poll", inputs={"job_id": "j-2"}))["run_id"], 30)

    asyncio.run(scenario())


# -- store, triggers, unite --------------------------------------------------------------------------------
def test_store_config_and_trigger_with_store(docs_env: Stack) -> None:
    serve(make_node("DataProcessorNode", ("cursor", "batch_size")))
    body = json.loads(example("store__b1.json"))
    context = {"state_manager": manager(), "graph_nodes": [GraphNodeModel(**n) for n in body["nodes"]]}

    async def scenario() -> None:
        page = await run_async_example("store__b2.py", context)
        assert page["result"]["store_config"]["default_values"] == {"cursor": "0", "batch_size": "100"}
        page = await run_async_example("store__b3.py", context)
        assert page["result"]["dropped_inputs"] == ["user_id"]  # the root node takes no user_id: dropped
        m = manager()
        states = await finish(m, page["result"])
        assert outputs_of(states, "processor") == [{"result": "DataProcessorNode(0,100)#0"}]
        await m.upsert_graph_json("store-json", body)
        await finish(m, await m.trigger("store-json", store={"cursor": "7", "batch_id": "b"}))

    asyncio.run(scenario())


def test_triggers_scheduled_graph_and_retry_policy(docs_env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = "DataPipeline"  # the page's namespace
    serve(
        make_node("DataExtractorNode", ("source",), ("data",)),
        make_node("DataProcessorNode", ("raw_data",)),
        namespace=pipeline,
    )
    run_example("triggers__b2.py", UNSET)  # it calls asyncio.run itself
    assert "Graph created with 2 triggers" in capsys.readouterr().out
    graph_nodes = [
        GraphNodeModel(
            node_name="DataExtractorNode",
            namespace=pipeline,
            identifier="extractor",
            inputs={"source": "initial"},
            next_nodes=["processor"],
        ),
        GraphNodeModel(
            node_name="DataProcessorNode",
            namespace=pipeline,
            identifier="processor",
            inputs={"raw_data": "${{ extractor.outputs.data }}"},
            next_nodes=[],
        ),
    ]
    context = {
        "state_manager": manager(pipeline),
        "graph_nodes": graph_nodes,
        "secrets": {"api_key": "your-api-key"},
        "triggers": [CronTrigger(expression="0 2 * * *"), CronTrigger(expression="0 */4 * * *")],
    }

    async def scenario() -> None:
        m = manager(pipeline)
        graph = await m.get_graph("data-pipeline")
        assert [t["value"]["expression"] for t in graph["triggers"]] == ["0 2 * * *", "0 */4 * * *"]
        assert all(t["type"] == "CRON" for t in graph["triggers"])
        await finish(m, await m.trigger("data-pipeline"))
        page = await run_async_example("triggers__b3.py", context)
        assert page["result"]["retry_policy"]["strategy"] == "EXPONENTIAL"
        assert len(page["result"]["triggers"]) == 2

    asyncio.run(scenario())


def test_unite_sdk_and_json(docs_env: Stack) -> None:
    serve(
        make_node("DataSplitterNode", (), ("chunk",), fan_out=3),
        make_node("DataProcessorNode", ("data",)),
        make_node("ResultMergerNode", ("processed_data",), ("merged",)),
    )
    page = run_example("unite__b4.py")

    async def scenario() -> None:
        m = manager()
        await m.upsert_graph("unite", page["graph_nodes"], {})
        await m.upsert_graph_json("unite-json", json.loads(example("unite__b3.json")))
        for graph in ("unite", "unite-json"):
            states = await finish(m, await m.trigger(graph))
            (merger,) = [s for s in states if s["identifier"] == "result_merger"]
            gathered = json.loads(merger["inputs"]["processed_data"])
            assert gathered == [f"DataProcessorNode(DataSplitterNode()#{i})#0" for i in range(3)]

    asyncio.run(scenario())
