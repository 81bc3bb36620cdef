"""A live `exo-celery serve` process (keys on) over PostgreSQL + Redis, with a real worker for two namespaces."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from exo_celery import GraphNodeModel, RetryPolicyModel, UnitesModel

from ..conftest import _drop_queues
from ..support import REDIS_URL, Proc, Stack, check_postgres, check_redis, create_database, drop_database, require, uid

ADMIN_KEY = "admin-key-0123456789"
A_KEY = "team-a-key-0123456789"
NS_A, NS_B = "srva", "srvb"


@dataclass
class Live:
    """The server's URL and keys, and the stack it reads."""

    url: str
    stack: Stack
    proc: Proc

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"x-api-key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_run(self, ns: str, run_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                body = c.get(f"/v0/namespace/{ns}/run/{run_id}/wait", params={"timeout": 10}).json()
                if body.get("terminal"):
                    return body
        raise TimeoutError(f"run {run_id} did not end in {timeout} s")


def start_server(stack: Stack, env: dict[str, str], args: tuple[str, ...] = ()) -> tuple[Proc, str]:
    """`exo-celery serve --port 0` in its own process group; returns it and the URL it printed."""
    proc = stack._spawn(["serve", "--port", "0", *args], "serve", env)
    proc.wait_for("listening on", timeout=60)
    found = re.search(r"listening on (http://\S+)", proc.text())
    assert found, proc.text()
    url = found.group(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the socket is bound before uvicorn starts answering
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require("PostgreSQL", check_postgres)
    require("Redis", check_redis)
    url = create_database()
    prefix = uid("srv")
    stack = Stack("server", tmp_path_factory.mktemp("server"), url, REDIS_URL, extra={"EXO_QUEUE_PREFIX": prefix})
    try:
        stack.start_worker(NS_A, concurrency=2)
        stack.start_worker(NS_B, concurrency=1)
        proc, base = start_server(
            stack,
            {
                "EXO_API_KEY": f"{ADMIN_KEY},{A_KEY}:{NS_A}",
                "EXO_FLOWER_URL": "http://127.0.0.1:1",
                "EXO_SERVE_VALIDATION_TIMEOUT": "1",
            },
        )
        live = Live(base, stack, proc)
        with live.client() as c:
            for ns in (NS_A, NS_B):
                for name, body in GRAPHS.items():
                    response = c.put(f"/v0/namespace/{ns}/graph/{name}", json=body)
                    assert response.status_code == 201, response.text
        yield live
    finally:
        stack.stop_all()
        drop_database(url)
        _drop_queues(prefix)


def _dump(nodes: list[GraphNodeModel]) -> list[dict[str, Any]]:
    return [n.model_dump(mode="json") for n in nodes]


GRAPHS: dict[str, dict[str, Any]] = {
    "echo": {
        "secrets": {"token": "s3cr3t-value-xyz"},
        "nodes": _dump([GraphNodeModel(node_name="Echo", identifier="echo", inputs={"text": "hello"})]),
    },
    "fanout": {
        "secrets": {},
        "nodes": _dump(
            [
                GraphNodeModel(node_name="Split", identifier="split", inputs={"items": "[]"}, next_nodes=["up"]),
                GraphNodeModel(node_name="Upper", identifier="up", inputs={"item": "${{ split.outputs.item }}"}),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="collect",
                    inputs={"values": "${{ up.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ]
        ),
    },
    "secret": {
        "secrets": {"api_key": "top-secret-9f8e7d"},
        "nodes": _dump([GraphNodeModel(node_name="UseSecret", identifier="use", inputs={"mode": "leak-output"})]),
        "retry_policy": RetryPolicyModel(max_retries=0).model_dump(mode="json"),
    },
    "flaky": {
        "secrets": {},
        "nodes": _dump([GraphNodeModel(node_name="Flaky", identifier="flaky", inputs={"path": "", "times": "1"})]),
        "retry_policy": RetryPolicyModel(max_retries=0).model_dump(mode="json"),
    },
}


def items(n: int) -> str:
    return "[" + ",".join(f'"i{i}"' for i in range(n)) + "]"


def flaky_path(tmp: Path) -> str:
    return str(tmp / f"flaky-{uuid.uuid4().hex[:8]}")
