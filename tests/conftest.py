"""Fixtures: a PostgreSQL + Redis stack and an embedded stack, each with a worker serving `tests.nodes`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import (
    RABBITMQ_URL,
    REDIS_URL,
    ROOT,
    Stack,
    check_postgres,
    check_rabbitmq,
    check_redis,
    create_database,
    drop_database,
    require,
    uid,
)

SHARED_NAMESPACE = "it"
PREBUILD = pytest.StashKey[subprocess.Popen[bytes]]()


def pytest_configure(config: pytest.Config) -> None:
    """A run that includes tests/compat starts building the compat venvs at once (tests/compat/prebuild.py)."""
    if hasattr(config, "workerinput") or os.environ.get("EXO_COMPAT_INNER"):
        return  # an xdist worker, or the compat interpreter itself
    args = [str(Path(a.split("::")[0]).resolve()) for a in config.args] or [str(ROOT / "tests")]
    compat = ROOT / "tests" / "compat"
    if not any(compat.is_relative_to(a) or Path(a).is_relative_to(compat) for a in args):
        return
    with (ROOT / ".venv-compat-prebuild.log").open("w") as log:
        config.stash[PREBUILD] = subprocess.Popen(
            [sys.executable, "-m", "tests.compat.prebuild"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """A build still running when the run ends (it did not reach the compat tests) is stopped."""
    prebuild = config.stash.get(PREBUILD, None)
    if prebuild is not None and prebuild.poll() is None:
        prebuild.terminate()
        prebuild.wait(timeout=30)


def _drop_queues(prefix: str) -> None:
    """Delete what a stack left in Redis (its queues and kombu bindings), nothing else."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{prefix}.*", f"_kombu.binding.{prefix}.*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.fixture(scope="session")
def pg_redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL ledger (a fresh database) + Redis broker, with a worker for namespace 'it'."""
    require("PostgreSQL", check_postgres)
    require("Redis", check_redis)
    url = create_database()
    # A queue prefix of its own keeps concurrent test sessions on one Redis apart.
    prefix = uid("s")
    stack = Stack("pg-redis", tmp_path_factory.mktemp("pg-redis"), url, REDIS_URL, extra={"EXO_QUEUE_PREFIX": prefix})
    try:
        stack.start_worker(SHARED_NAMESPACE)
        yield stack
    finally:
        stack.stop_all()
        drop_database(url)
        _drop_queues(prefix)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded default (SQLite + filesystem broker), with a worker for namespace 'it'."""
    stack = Stack("embedded", tmp_path_factory.mktemp("embedded"))
    try:
        stack.start_worker(SHARED_NAMESPACE)
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="session")
def pg_rabbitmq_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL ledger + RabbitMQ broker, with a worker for namespace 'it'."""
    require("PostgreSQL", check_postgres)
    require("RabbitMQ", check_rabbitmq)
    url = create_database()
    stack = Stack(
        "pg-rabbitmq", tmp_path_factory.mktemp("pg-rabbitmq"), url, RABBITMQ_URL, extra={"EXO_QUEUE_PREFIX": uid("r")}
    )
    try:
        stack.start_worker(SHARED_NAMESPACE)
        yield stack
    finally:
        stack.stop_all()
        drop_database(url)
        _drop_rabbitmq_queues(stack.extra["EXO_QUEUE_PREFIX"])


def _drop_rabbitmq_queues(prefix: str) -> None:
    from kombu import Connection

    from . import nodes

    queues = [f"{prefix}.{SHARED_NAMESPACE}.{n.__name__}" for n in nodes.NODES]
    with Connection(RABBITMQ_URL) as conn:
        channel = conn.default_channel
        for name in (*queues, f"{prefix}.default"):
            try:
                channel.queue_delete(name)
            except Exception:  # already gone
                channel = conn.channel()


@pytest.fixture(params=["pg_redis", "embedded"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each integration test runs on both stacks."""
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture
def pg_stack(pg_redis_stack: Stack) -> Stack:
    return pg_redis_stack


@pytest.fixture
def fresh_pg(tmp_path: Path) -> Iterator[Stack]:
    """A private PostgreSQL database + Redis, for tests that start their own workers and beat."""
    require("PostgreSQL", check_postgres)
    require("Redis", check_redis)
    url = create_database()
    prefix = uid("t")
    stack = Stack("pg-redis-private", tmp_path / "home", url, REDIS_URL, extra={"EXO_QUEUE_PREFIX": prefix})
    try:
        yield stack
    finally:
        stack.stop_all()
        drop_database(url)
        _drop_queues(prefix)
