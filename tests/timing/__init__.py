"""Helpers shared by the timing, recovery and operator-action tests."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..support import (
    REDIS_URL,
    Proc,
    Stack,
    check_postgres,
    check_redis,
    create_database,
    drop_database,
    require,
    uid,
)

NS = "timing"  # the namespace served by workers running tests.timing.nodes
NODES_SPEC = "tests.timing.nodes:NODES"
T = TypeVar("T")

_workers: dict[int, Proc] = {}


def ensure_worker(stack: Stack) -> Stack:
    """Start (once per stack) a worker serving `tests.timing.nodes` in namespace `timing`; stack.stop_all ends it."""
    proc = _workers.get(id(stack))
    if proc is None or proc not in stack.procs or proc.popen.poll() is not None:
        _workers[id(stack)] = stack.start_worker(NS, nodes=NODES_SPEC)
    return stack


@contextmanager
def private_pg(home: Path, **extra: str) -> Iterator[Stack]:
    """A private PostgreSQL database + Redis (own queue prefix) with EXO_* settings `extra`; stops its processes."""
    require("PostgreSQL", check_postgres)
    require("Redis", check_redis)
    url = create_database()
    stack = Stack("pg-redis-private", home, url, REDIS_URL, extra={"EXO_QUEUE_PREFIX": uid("t"), **extra})
    try:
        yield stack
    finally:
        stack.stop_all()
        drop_database(url)


def stamps(path: Path, column: int = 0) -> list[float]:
    """Start times recorded in a file, one line per execution: column 0 for the timing nodes and
    tests.nodes.Poll's `.times` file, column 1 for tests.nodes.Sleep (`<pid> <time>`)."""
    if not path.exists():
        return []
    return [float(line.split()[column]) for line in path.read_text().splitlines() if line.strip()]


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met after {timeout} s")
        time.sleep(interval)


def execution_ended(worker: Proc, state_id: str) -> bool:
    """True once `worker`'s log says how its last execution of `state_id` ended: a line naming the state after
    its `status=RUNNING` one (a new status, "cancelled ... the node was stopped", "already recorded ...")."""
    text = worker.text()
    started = list(re.finditer(rf"state={state_id} .*status=RUNNING\n", text))
    return bool(started) and state_id in text[started[-1].end() :]


def skipped_deliveries(worker: Proc, node_name: str) -> int:
    """How many messages for `node_name` `worker` received and dropped (Celery logs their result SKIPPED)."""
    return len(re.findall(rf"\.{node_name}\[[^\]]+\] succeeded in [^:]*: \{{'status': 'SKIPPED'\}}", worker.text()))


def by_identifier(states: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = {}
    for s in states:
        result.setdefault(s["identifier"], []).append(s)
    return result


def report_lateness(label: str, values: list[float]) -> None:
    """Print lateness figures (seconds after due) so `pytest -s` shows them."""
    if not values:
        return
    print(
        f"\n[lateness] {label}: n={len(values)} median={statistics.median(values) * 1000:.0f} ms "
        f"worst={max(values) * 1000:.0f} ms best={min(values) * 1000:.0f} ms"
    )
