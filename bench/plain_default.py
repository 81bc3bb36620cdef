"""Plain Celery as its users run it: `celery -A bench.plain_default worker -Q bench.default -c 2`.

Celery's default configuration (no late acks, no task events, prefetch 4, the
worker's default WARNING log level), with a Redis result backend, because a
chord and a user's `.get()` need one. The only setting is the default queue,
so that this worker and the benchmark's other workers (sharing one Redis
database) never take each other's tasks. Results are collected as a user
would: `AsyncResult.get()` on the chord, on the chain's last task, on a task.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
QUEUE = "bench.default"

app = Celery("bench.plain_default", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = QUEUE


@app.task(name="bench.default.noop")
def noop(item: int) -> int:
    """A chord header task."""
    return item


@app.task(name="bench.default.collect")
def collect(results: list[int]) -> int:
    """The chord callback."""
    return len(results)


@app.task(name="bench.default.hop")
def hop(n: int) -> int:
    """One link of a chain (its result is the next link's argument)."""
    return n + 1
