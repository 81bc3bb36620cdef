"""Plain Celery for the async I/O benchmark: `celery -A bench.io_plain worker -P gevent -c 100 -Q bench.io`.

Sync tasks sleeping `seconds` (cooperative under gevent's monkey patching, which the `celery` command applies
before anything is imported); each finished task INCRs a Redis counter and the last one pushes its time.
"""

from __future__ import annotations

import os
import time

import redis

from exo_celery.celery_app import make_app
from exo_celery.settings import Settings

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
QUEUE = "bench.io"

app = make_app(Settings(broker_url=REDIS_URL, database_url="sqlite://", queue_prefix="bench"), main="bench.io_plain")
app.conf.update(task_default_queue=QUEUE, worker_prefetch_multiplier=4)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


@app.task(name="bench.io.root")
def root(key: str, count: int, seconds: float) -> None:
    """The fan-out: send `count` waits."""
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            wait.apply_async((key, count, seconds), producer=producer)


@app.task(name="bench.io.wait")
def wait(key: str, count: int, seconds: float) -> None:
    """Simulated I/O: a blocking sleep (gevent makes it yield)."""
    time.sleep(seconds)
    if _redis().incr(f"{key}:n") == count:
        _redis().rpush(key, repr(time.time()))
