"""The plain-Celery side of the benchmark: `celery -A bench.plain worker -Q bench.plain -c 2`.

The app comes from exo_celery's own `make_app` (JSON, late acks, task events,
prefetch, no results...), so both sides always run with the same Celery
configuration; only the chord's header tasks store their results, in Redis,
because a chord needs them. Finishing tasks RPUSH their `time.time()` to a
Redis list the driver BLPOPs, so the driver never polls.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from exo_celery.celery_app import make_app
from exo_celery.settings import Settings

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
QUEUE = "bench.plain"

app = make_app(Settings(broker_url=REDIS_URL, database_url="sqlite://", queue_prefix="bench"), main="bench.plain")
app.conf.update(task_default_queue=QUEUE, result_backend=REDIS_URL, result_serializer="json", result_expires=600)

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(REDIS_URL)
    return client


def done(key: str) -> None:
    """Tell the driver the measured work ended now."""
    _redis().rpush(key, repr(time.time()))


@app.task(name="bench.noop", ignore_result=False)
def noop(item: int) -> int:
    """A chord header task (its result feeds the callback, like a fan-out branch's output feeds a unite)."""
    return item


@app.task(name="bench.collect")
def collect(results: list[Any], key: str) -> int:
    """The chord callback."""
    done(key)
    return len(results)


@app.task(name="bench.hop")
def hop(key: str, remaining: int, n: int) -> None:
    """One hop of a chain: send the next task, or report the end."""
    if remaining > 1:
        hop.apply_async((key, remaining - 1, n + 1))
    else:
        done(key)


@app.task(name="bench.tick")
def tick(key: str, total: int) -> None:
    """One of `total` independent tasks; the last to finish reports the end."""
    if _redis().incr(key + ":n") == total:
        done(key)
