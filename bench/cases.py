"""The measured cases, each as an exo_celery graph and its plain-Celery equivalent.

Every exo_celery timing runs from just before `trigger` to the run's
`finished_at` in the ledger (written by the worker in the transaction that ends
the run); every plain-Celery timing from just before the first send to the
`time.time()` the last task pushes to Redis.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from exo_celery import GraphNodeModel, UnitesModel

from .harness import REDIS_URL, Ledger, Proc, check_all


def fan_graph(width: int) -> list[GraphNodeModel]:
    """fan (width outputs) -> noop per output -> gather (unites fan, reads every noop output)."""
    return [
        GraphNodeModel(node_name="Fan", identifier="fan", inputs={"count": str(width)}, next_nodes=["noop"]),
        GraphNodeModel(
            node_name="Noop", identifier="noop", inputs={"item": "${{ fan.outputs.item }}"}, next_nodes=["gather"]
        ),
        GraphNodeModel(
            node_name="Gather",
            identifier="gather",
            inputs={"items": "${{ noop.outputs.item }}"},
            unites=UnitesModel(identifier="fan"),
        ),
    ]


def chain_graph(length: int) -> list[GraphNodeModel]:
    """h0 -> h1 -> ... each hop reading the previous hop's output."""
    nodes = []
    for i in range(length):
        nodes.append(
            GraphNodeModel(
                node_name="Hop",
                identifier=f"h{i}",
                inputs={"n": "0" if i == 0 else f"${{{{ h{i - 1}.outputs.n }}}}"},
                next_nodes=[f"h{i + 1}"] if i + 1 < length else None,
            )
        )
    return nodes


def one_graph() -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Hop", identifier="h0", inputs={"n": "0"})]


@dataclass
class Exo:
    """The exo_celery side: a client and direct reads of the ledger."""

    manager: Any
    ledger: Ledger
    upserted: set[str]

    def ensure(self, name: str, nodes: list[GraphNodeModel]) -> None:
        if name not in self.upserted:
            self.manager.upsert_graph_sync(name, nodes, secrets={})
            self.upserted.add(name)

    def run_once(self, name: str, nodes: list[GraphNodeModel], timeout: float = 600.0) -> tuple[float, str]:
        """Seconds from trigger to the run's end, and the run id."""
        self.ensure(name, nodes)
        t0 = time.time()
        run_id = self.manager.trigger_sync(name)["run_id"]
        status, _created, _started, finished = self.ledger.wait_run(run_id, timeout)
        if status != "SUCCESS":
            raise RuntimeError(f"exo_celery run {run_id} of {name} ended {status}")
        return finished - t0, run_id

    def fan_out(self, width: int) -> float:
        return self.run_once(f"fan{width}", fan_graph(width))[0]

    def chain(self, length: int) -> float:
        """Seconds per hop."""
        return self.run_once(f"chain{length}", chain_graph(length))[0] / length

    def independent(self, count: int) -> tuple[float, float]:
        """Triggering while the worker consumes: (runs/s from the first trigger to the last run's end, s triggering)."""
        name = f"one{uuid.uuid4().hex[:8]}"
        self.ensure(name, one_graph())
        t0 = time.time()
        for _ in range(count):
            self.manager.trigger_sync(name)
        triggered = time.time() - t0
        failed, _first, last_finished = self.ledger.wait_graph_runs(name, count, timeout=600)
        if failed:
            raise RuntimeError(f"{failed} of {count} independent runs did not succeed")
        return count / (last_finished - t0), triggered

    def backlog(self, count: int, nodename: str) -> tuple[float, float]:
        """The worker's own throughput: trigger with its consumer paused, then drain (runs/s, s triggering)."""
        name = f"one{uuid.uuid4().hex[:8]}"
        self.ensure(name, one_graph())
        queue = f"{self.manager.settings.queue_prefix}.{self.manager.namespace}.Hop"  # the one node's queue
        control = self.manager.app.control
        control.cancel_consumer(queue, destination=[nodename], reply=True, timeout=5)
        t0 = time.time()
        for _ in range(count):
            self.manager.trigger_sync(name)
        triggered = time.time() - t0
        time.sleep(0.5)  # let messages prefetched before the pause drain
        t1 = time.time()
        control.add_consumer(queue, destination=[nodename], reply=True, timeout=5)
        failed, _first, last_finished = self.ledger.wait_graph_runs(name, count, timeout=600)
        if failed:
            raise RuntimeError(f"{failed} of {count} backlog runs did not succeed")
        return count / (last_finished - t1), triggered


class Plain:
    """The plain-Celery side: sends from this process, end times pushed by the last task."""

    def __init__(self) -> None:
        import redis

        from . import plain

        self.tasks = plain
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.watch: list[Proc] = []

    def _end(self, key: str, timeout: float = 600.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.redis.blpop([key], timeout=2)  # redis-py's default socket timeout is 5 s
            if got is not None:
                return float(got[1])
            check_all(self.watch)
        raise TimeoutError(f"plain Celery did not finish {key} in {timeout} s")

    def chord(self, width: int) -> float:
        from celery import chord

        key = f"bench:chord:{uuid.uuid4().hex}"
        t0 = time.time()
        chord(self.tasks.noop.s(i) for i in range(width))(self.tasks.collect.s(key))
        return self._end(key) - t0

    def chain(self, length: int) -> float:
        key = f"bench:chain:{uuid.uuid4().hex}"
        t0 = time.time()
        self.tasks.hop.apply_async((key, length, 0))
        return (self._end(key) - t0) / length

    def independent(self, count: int) -> tuple[float, float]:
        key = f"bench:tick:{uuid.uuid4().hex}"
        t0 = time.time()
        self._send_ticks(key, count)
        sent = time.time() - t0
        return count / (self._end(key) - t0), sent

    def backlog(self, count: int, nodename: str) -> tuple[float, float]:
        key = f"bench:tick:{uuid.uuid4().hex}"
        control = self.tasks.app.control
        control.cancel_consumer(self.tasks.QUEUE, destination=[nodename], reply=True, timeout=5)
        t0 = time.time()
        self._send_ticks(key, count)
        sent = time.time() - t0
        time.sleep(0.5)
        t1 = time.time()
        control.add_consumer(self.tasks.QUEUE, destination=[nodename], reply=True, timeout=5)
        return count / (self._end(key) - t1), sent

    def _send_ticks(self, key: str, count: int) -> None:
        with self.tasks.app.producer_or_acquire() as producer:
            for _ in range(count):
                self.tasks.tick.apply_async((key, count), producer=producer)
