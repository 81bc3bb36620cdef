"""exo_celery against the real exospherehost SDK: its names, signatures, models, signals, JSON body, responses."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import exospherehost as sdk
import pytest
from pydantic import BaseModel

import exo_celery
from exo_celery import StateManager

from ...support import ROOT, Stack, run, uid
from .conftest import SDK_NAMESPACE as NS

SECRET = "tok-4d2c1b"


# -- Exosphere's response models, copied from its state manager (app/models/graph_models.py) -------------
class _Unites(BaseModel):
    identifier: str
    strategy: Literal["ALL_SUCCESS", "ALL_DONE"]


class _NodeTemplate(BaseModel):
    node_name: str
    namespace: str
    identifier: str
    inputs: dict[str, Any]
    next_nodes: list[str] | None = None
    unites: _Unites | None = None


class _Trigger(BaseModel):
    type: Literal["CRON"]
    value: dict[str, Any]


class UpsertGraphTemplateResponse(BaseModel):
    nodes: list[_NodeTemplate]
    secrets: dict[str, bool]
    retry_policy: sdk.RetryPolicyModel
    store_config: sdk.StoreConfigModel
    triggers: list[_Trigger]
    created_at: datetime
    updated_at: datetime
    validation_status: Literal["VALID", "INVALID", "PENDING", "ONGOING"]
    validation_errors: list[str] | None = None


class TriggerGraphResponseModel(BaseModel):
    status: Literal["CREATED"]
    run_id: str


def check_graph_response(view: dict[str, Any]) -> UpsertGraphTemplateResponse:
    parsed = UpsertGraphTemplateResponse.model_validate(view)
    assert all(value is True for value in view["secrets"].values()), view["secrets"]
    assert parsed.validation_status == "VALID" and not parsed.validation_errors
    return parsed


# -- names and signatures -------------------------------------------------------------------------------
def test_every_sdk_name_is_exported() -> None:
    missing = [name for name in sdk.__all__ if name != "VERSION" and not hasattr(exo_celery, name)]
    assert missing == []


# Deliberate differences, each documented in docs/migrating-from-exosphere.md.
LENIENT_DEFAULTS = {
    ("upsert_graph", "secrets"): None,  # optional here (the store page's example omits it)
    ("upsert_graph", "validation_timeout"): None,  # None: the StateManager's own (60 s unless set)
}


@pytest.mark.parametrize(
    "theirs, ours",
    [
        (sdk.StateManager.__init__, StateManager.__init__),
        (sdk.StateManager.upsert_graph, StateManager.upsert_graph),
        (sdk.StateManager.trigger, StateManager.trigger),
        (sdk.StateManager.get_graph, StateManager.get_graph),
        (sdk.Runtime.__init__, exo_celery.Runtime.__init__),
        (sdk.Runtime.start, exo_celery.Runtime.start),
        (sdk.Runtime._start, exo_celery.Runtime._start),
        (sdk.PruneSignal.__init__, exo_celery.PruneSignal.__init__),
        (sdk.ReQueueAfterSignal.__init__, exo_celery.ReQueueAfterSignal.__init__),
    ],
    ids=lambda f: f.__qualname__,
)
def test_signatures_match_the_sdk(theirs: Any, ours: Any) -> None:
    """Same names in the same positions with the same defaults; our extras are keyword-only."""
    sdk_params = list(inspect.signature(theirs).parameters.values())
    our_params = list(inspect.signature(ours).parameters.values())
    method = theirs.__name__
    for i, p in enumerate(sdk_params):
        q = our_params[i]
        assert (q.name, q.kind) == (p.name, p.kind), f"{ours.__qualname__} parameter {i}: {q} vs the SDK's {p}"
        expected = LENIENT_DEFAULTS.get((method, p.name), p.default)
        if p.name == "data":  # PruneSignal(data={}): ours takes None for the same empty dict
            continue
        assert q.default == expected, f"{ours.__qualname__}({p.name}=...): default {q.default!r}, SDK's {p.default!r}"
    for q in our_params[len(sdk_params) :]:
        assert q.kind in (q.KEYWORD_ONLY, q.VAR_KEYWORD), f"{ours.__qualname__}: extra {q} must be keyword-only"
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)


@pytest.mark.parametrize("sdk_class, our_class", [(sdk.StateManager, StateManager), (sdk.Runtime, exo_celery.Runtime)])
def test_every_sdk_method_exists(sdk_class: type, our_class: type) -> None:
    public = [n for n, v in vars(sdk_class).items() if callable(v) and (not n.startswith("_") or n == "_start")]
    assert public and [n for n in public if not hasattr(our_class, n)] == []


@pytest.mark.parametrize(
    "name", ["GraphNodeModel", "UnitesModel", "RetryPolicyModel", "StoreConfigModel", "CronTrigger"]
)
def test_models_have_the_sdk_fields(name: str) -> None:
    theirs, ours = getattr(sdk, name).model_fields, getattr(exo_celery, name).model_fields
    assert set(theirs) <= set(ours)
    for field, info in theirs.items():
        if not info.is_required():  # a default of the SDK's is ours too
            assert ours[field].get_default(call_default_factory=True) == info.get_default(call_default_factory=True)


@pytest.mark.parametrize("name", ["UnitesStrategyEnum", "RetryStrategyEnum"])
def test_enums_have_the_sdk_members(name: str) -> None:
    assert [(m.name, m.value) for m in getattr(sdk, name)] == [(m.name, m.value) for m in getattr(exo_celery, name)]


def test_sdk_model_objects_are_accepted_by_our_models() -> None:
    unites = sdk.UnitesModel(identifier="a", strategy=sdk.UnitesStrategyEnum.ALL_DONE)
    node = exo_celery.GraphNodeModel(node_name="N", identifier="b", unites=unites)
    assert node.unites == exo_celery.UnitesModel(identifier="a", strategy="ALL_DONE")
    policy = exo_celery.RetryPolicyModel.model_validate(sdk.RetryPolicyModel(strategy=sdk.RetryStrategyEnum.LINEAR))
    assert policy.strategy is exo_celery.RetryStrategyEnum.LINEAR and policy.compute_delay(2) == 4000


# -- running SDK nodes with SDK models and signals ------------------------------------------------------
def fan_out_graph() -> list[Any]:
    return [
        sdk.GraphNodeModel(
            node_name="SdkSplit",
            namespace=NS,
            identifier="split",
            inputs={"items": "${{ store.items }}"},
            next_nodes=["work"],
        ),
        sdk.GraphNodeModel(
            node_name="SdkWork",
            namespace=NS,
            identifier="work",
            inputs={"item": "${{ split.outputs.item }}"},
            next_nodes=["collect"],
        ),
        sdk.GraphNodeModel(
            node_name="SdkCollect",
            namespace=NS,
            identifier="collect",
            inputs={"values": "${{ work.outputs.result }}"},
            unites=sdk.UnitesModel(identifier="split", strategy=sdk.UnitesStrategyEnum.ALL_SUCCESS),
        ),
    ]


def test_sdk_nodes_models_and_prune_signal_run_a_fan_out_and_unite(sdk_stack: Stack) -> None:
    m = StateManager(NS, None, None, "v0", settings=sdk_stack.settings(), validation_timeout=30)  # SDK positions
    name = uid("sdk")
    graph = run(
        m.upsert_graph(  # the SDK's positional order: name, nodes, secrets, retry_policy, store_config, triggers
            name,
            fan_out_graph(),
            {"token": SECRET},
            sdk.RetryPolicyModel(max_retries=1, strategy=sdk.RetryStrategyEnum.FIXED, backoff_factor=50),
            sdk.StoreConfigModel(required_keys=[], default_values={"items": '["a", "p1", "b"]'}),
            [sdk.CronTrigger(expression="0 9 * * 1-5")],
            30,
            1,
        )
    )
    parsed = check_graph_response(graph)
    assert parsed.triggers[0].value["expression"] == "0 9 * * 1-5"
    assert parsed.retry_policy.strategy == sdk.RetryStrategyEnum.FIXED and parsed.nodes[2].unites is not None
    check_graph_response(run(m.get_graph(name)))
    assert SECRET not in json.dumps(graph)

    created = run(m.trigger(name, {"items": '["a", "p1", "b"]', "user_id": "1"}, {"extra": "x"}, 0))
    TriggerGraphResponseModel.model_validate(created)
    assert created["dropped_inputs"] == ["user_id"]
    assert run(m.wait(created["run_id"], timeout=60))["status"] == "SUCCESS"
    states = run(m.list_states(created["run_id"]))
    collect = next(s for s in states if s["identifier"] == "collect")
    assert collect["outputs"] == {"count": "2", "values": json.dumps([f"A:{len(SECRET)}", f"B:{len(SECRET)}"])}
    pruned = [s for s in states if s["status"] == "PRUNED"]
    assert len(pruned) == 1 and pruned[0]["data"] == {"reason": "pruned p1"}


def test_sdk_requeue_signal_and_retry_policy(sdk_stack: Stack, tmp_path: Path) -> None:
    m = sdk_stack.manager(NS)
    poll, fail = uid("poll"), uid("fail")
    policy = sdk.RetryPolicyModel(max_retries=1, strategy=sdk.RetryStrategyEnum.FIXED, backoff_factor=50)
    path = str(tmp_path / "calls")
    run(
        m.upsert_graph(
            poll,
            [
                sdk.GraphNodeModel(
                    node_name="SdkPoll", namespace=NS, identifier="p", inputs={"path": path, "times": "2"}
                )
            ],
            {},
        )
    )
    run(
        m.upsert_graph(
            fail,
            [sdk.GraphNodeModel(node_name="SdkFail", namespace=NS, identifier="f", inputs={"text": "x"})],
            {},
            policy,
        )
    )
    ok, failed = run(m.trigger(poll))["run_id"], run(m.trigger(fail))["run_id"]
    assert run(m.wait(ok, timeout=60))["status"] == "SUCCESS"
    (state,) = run(m.list_states(ok))
    assert state["outputs"] == {"calls": "3"} and state["retry_count"] == 0  # requeues are not retries
    assert run(m.wait(failed, timeout=60))["status"] == "FAILED"
    states = run(m.list_states(failed))
    assert [s["status"] for s in states] == ["RETRY_CREATED", "ERRORED"]
    assert states[-1]["error"] == "RuntimeError: refused x"


# -- the SDK's own JSON body, captured from its HTTP client -----------------------------------------------
class _Recorder(BaseHTTPRequestHandler):
    """Stands in for Exosphere's state manager: records what the SDK sends, answers as Exosphere does."""

    def _reply(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.command, self.path, body, self.headers.get("x-api-key")))  # type: ignore[attr-defined]

    def do_PUT(self) -> None:
        self._record()
        self._reply({"validation_status": "VALID", "validation_errors": []})

    def do_POST(self) -> None:
        self._record()
        self._reply({"status": "CREATED", "run_id": "recorded"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_sdk_json_body_through_upsert_graph_json_and_the_cli(
    sdk_stack: Stack, recorder: ThreadingHTTPServer, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{recorder.server_address[1]}"
    client = sdk.StateManager(NS, state_manager_uri=uri, key="k")
    name = uid("json")
    asyncio.run(
        client.upsert_graph(
            name,
            fan_out_graph(),
            {"token": SECRET},
            retry_policy=sdk.RetryPolicyModel(max_retries=2, strategy=sdk.RetryStrategyEnum.LINEAR_FULL_JITTER),
            store_config=sdk.StoreConfigModel(default_values={"items": '["x", "y"]'}),
            triggers=[sdk.CronTrigger(expression="0 0 * * 0")],
        )
    )
    asyncio.run(client.trigger(name, inputs={"items": '["q"]'}, store={"s": "1"}, start_delay=10))
    (method, path, body, _), (_, trigger_path, trigger_body, _) = recorder.seen  # type: ignore[attr-defined]
    assert (method, path) == ("PUT", f"/v0/namespace/{NS}/graph/{name}") and trigger_path.endswith("/trigger")
    assert body["triggers"] == [{"type": "CRON", "value": {"expression": "0 0 * * 0"}}]

    m = sdk_stack.manager(NS)
    check_graph_response(run(m.upsert_graph_json(name, body)))
    created = run(m.trigger(name, **trigger_body))  # the SDK's trigger body as keyword arguments
    assert run(m.wait(created["run_id"], timeout=60))["status"] == "SUCCESS"
    collect = next(s for s in run(m.list_states(created["run_id"])) if s["identifier"] == "collect")
    assert json.loads(collect["outputs"]["values"]) == [f"Q:{len(SECRET)}"]

    file = tmp_path / "graph.json"
    file.write_text(json.dumps(body))
    done = subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", "upsert", str(file), "--name", f"{name}-cli", "-n", NS, "--json"],
        cwd=ROOT,
        env=sdk_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    check_graph_response(json.loads(done.stdout))
    assert SECRET not in done.stdout + done.stderr
