"""Fixtures of the compat suite's SDK tests (run only inside the Python 3.12 compat interpreter)."""

from __future__ import annotations

import pytest

from ...support import Stack

SDK_NAMESPACE = "sdk"


@pytest.fixture(scope="session")
def sdk_stack(pg_redis_stack: Stack) -> Stack:
    """PostgreSQL + Redis, with an `exo-celery worker` serving the SDK-written nodes of namespace 'sdk'."""
    pg_redis_stack.start_worker(SDK_NAMESPACE, nodes="tests.compat.sdk.nodes:NODES")
    return pg_redis_stack
