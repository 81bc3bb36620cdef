"""The real exospherehost SDK's HTTP `StateManager`, unchanged, driving a run through `exo-celery serve`.

Run with a Python that has exospherehost installed (3.12, exospherehost==0.0.3):

    <python3.12> tests/compat/sdk_http_client.py <server url> <namespace> <key>

The namespace needs a worker serving `tests.nodes` (Echo). The SDK upserts a graph, gets it and
triggers it; then this script asks our API (`/run/{id}/wait`) until the ledger says SUCCESS.
Exits 0 on success, 1 with a message otherwise. Uses only the SDK and the standard library.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
import uuid

from exospherehost import StateManager
from exospherehost.models import GraphNodeModel, RetryPolicyModel, StoreConfigModel


def wait_success(url: str, namespace: str, key: str, run_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{url}/v0/namespace/{namespace}/run/{run_id}/wait?timeout=10", headers={"x-api-key": key}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            run = json.loads(response.read())
        if run.get("terminal"):
            return run
    raise TimeoutError(f"run {run_id} still not finished after {timeout} s")


async def main(url: str, namespace: str, key: str) -> int:
    manager = StateManager(namespace, state_manager_uri=url, key=key)
    name = f"sdk-http-{uuid.uuid4().hex[:8]}"
    nodes = [
        GraphNodeModel(
            node_name="Echo",
            namespace=namespace,
            identifier="first",
            inputs={"text": "${{ store.greeting }}"},
            next_nodes=["second"],
        ),
        GraphNodeModel(
            node_name="Echo",
            namespace=namespace,
            identifier="second",
            inputs={"text": "${{ first.outputs.text }} again"},
        ),
    ]
    graph = await manager.upsert_graph(
        name,
        nodes,
        {"api_token": "sdk-secret-value"},
        retry_policy=RetryPolicyModel(max_retries=1),
        store_config=StoreConfigModel(required_keys=["greeting"]),
    )
    assert graph["validation_status"] == "VALID", graph
    fetched = await manager.get_graph(name)
    assert [n["identifier"] for n in fetched["nodes"]] == ["first", "second"], fetched
    assert "sdk-secret-value" not in json.dumps(fetched), "a secret value came back"
    started = await manager.trigger(name, store={"greeting": "hello from the SDK"})
    assert started["status"] == "CREATED" and started["run_id"], started
    run = wait_success(url, namespace, key, started["run_id"])
    if run["status"] != "SUCCESS":
        print(f"run {started['run_id']} ended {run['status']}: {run}", file=sys.stderr)
        return 1
    print(f"ok: graph {name} upserted, got and triggered by the SDK; run {started['run_id']} SUCCESS {run['counts']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(asyncio.run(main(*sys.argv[1:])))
    except Exception as exc:  # one line, the reason
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
