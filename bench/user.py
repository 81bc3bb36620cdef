"""The user's comparison (issue 15): exo_celery from `trigger` to `wait()` returning, against plain Celery
with its default configuration from `apply_async` to `.get()` returning (Redis result backend).

Also the pushed `wait`'s own figure: how long after a run's `finished_at` (the ledger's record of its
end) `wait` returns, with many waiters in one process at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .cases import chain_graph, fan_graph, one_graph
from .harness import Ledger

TIMEOUT = 600.0


@dataclass
class UserExo:
    """exo_celery as a user times it: trigger, then `wait`."""

    manager: Any
    upserted: set[str]

    def _run(self, name: str, nodes: list[Any]) -> float:
        if name not in self.upserted:
            self.manager.upsert_graph_sync(name, nodes, secrets={})
            self.upserted.add(name)
        t0 = time.time()
        run_id = self.manager.trigger_sync(name)["run_id"]
        done = self.manager.wait_sync(run_id, timeout=TIMEOUT)
        elapsed = time.time() - t0
        if done["status"] != "SUCCESS":
            raise RuntimeError(f"exo_celery run {run_id} of {name} ended {done['status']}")
        return elapsed

    def fan_out(self, width: int) -> float:
        return self._run(f"ufan{width}", fan_graph(width))

    def chain(self, length: int) -> float:
        """Seconds per hop."""
        return self._run(f"uchain{length}", chain_graph(length)) / length

    def one(self, count: int) -> float:
        """Seconds per one-node run, triggered and waited for one after another."""
        t0 = time.time()
        for _ in range(count):
            self._run("uone", one_graph())
        return (time.time() - t0) / count


class UserPlain:
    """Plain Celery with its defaults, results collected with `.get()`."""

    def __init__(self) -> None:
        from . import plain_default

        self.tasks = plain_default

    def fan_out(self, width: int) -> float:
        from celery import chord

        t = self.tasks
        t0 = time.time()
        result = chord(t.noop.s(i) for i in range(width))(t.collect.s())
        if result.get(timeout=TIMEOUT) != width:
            raise RuntimeError("the chord's callback saw the wrong number of results")
        return time.time() - t0

    def chain(self, length: int) -> float:
        from celery import chain

        t = self.tasks
        t0 = time.time()
        result = chain(t.hop.s(0), *(t.hop.s() for _ in range(length - 1))).apply_async()
        if result.get(timeout=TIMEOUT) != length:
            raise RuntimeError("the chain's last task returned the wrong value")
        return (time.time() - t0) / length

    def one(self, count: int) -> float:
        t0 = time.time()
        for _ in range(count):
            self.tasks.hop.delay(0).get(timeout=TIMEOUT)
        return (time.time() - t0) / count


def wait_lags(manager: Any, ledger: Ledger, runs: int, length: int = 5) -> list[float]:
    """Trigger `runs` chains of `length` hops, each with a waiter of its own, all waiting at once in one
    event loop; returns, per run, seconds from its `finished_at` to its `wait` returning."""
    name = f"wchain{length}"
    manager.upsert_graph_sync(name, chain_graph(length), secrets={})

    async def timed(run_id: str) -> tuple[str, float]:
        done = await manager.wait(run_id, timeout=TIMEOUT)
        returned = time.time()
        if done["status"] != "SUCCESS":
            raise RuntimeError(f"run {run_id} ended {done['status']}")
        return run_id, returned

    async def all_waiting() -> list[tuple[str, float]]:
        tasks = []
        for _ in range(runs):
            run_id = (await manager.trigger(name))["run_id"]
            tasks.append(asyncio.create_task(timed(run_id)))
        return await asyncio.gather(*tasks)

    returned = asyncio.run(all_waiting())
    lags = []
    for run_id, at in returned:
        finished = ledger.query("SELECT finished_at FROM exo_runs WHERE id = ?", run_id)[0][0]
        lags.append(at - float(finished))
    return lags


def start_plain_default_worker(bench: Any) -> Any:
    """The plain-default worker: `celery -A bench.plain_default worker -Q bench.default -c 2 -P prefork`,
    nothing else on its command line (no -E, Celery's default log level)."""
    import socket
    import sys
    import uuid
    from pathlib import Path

    celery = str(Path(sys.executable).with_name("celery"))
    name = f"default{uuid.uuid4().hex[:4]}"
    argv = [celery, "-A", "bench.plain_default", "worker", "-Q", "bench.default", "-c", "2", "-P", "prefork"]
    argv += ["-n", f"{name}@%h"]
    proc = bench.spawn(argv, "plain-default")
    proc.nodename = f"{name}@{socket.gethostname()}"
    # At WARNING the worker logs no " ready." line: ask it instead.
    from .plain_default import app

    deadline = time.monotonic() + 90
    while not app.control.ping(destination=[proc.nodename], timeout=0.5):
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the plain-default worker did not answer a ping in 90 s; log {proc.log}")
    return proc
