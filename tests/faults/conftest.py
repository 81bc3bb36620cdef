"""Fixtures of the fault suite: a private Redis per test, a fast-recovery stack on it, and the figures."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import Stack, check_postgres, create_database, drop_database, require, uid
from .harness import FAST, Figures, PrivateRedis

_FIGURES: list[Figures] = []


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """Collects each scenario's figures (printed at the end, and kept in faults-figures.json)."""
    found = Figures(tmp_path_factory.getbasetemp() / "faults-figures.json")
    _FIGURES.append(found)
    return found


def _redis_server_binary() -> None:
    if shutil.which("redis-server") is None:
        raise FileNotFoundError("redis-server is not on PATH (the fault suite runs private Redis servers)")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, on a free port (the shared one on 6379 is never touched)."""
    require("redis-server", _redis_server_binary)
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fstack(private_redis: PrivateRedis, fresh_pg: Stack) -> Iterator[Stack]:
    """A private ledger database, the private Redis as broker, lease 3 s and sweep 1 s (fast recovery)."""
    fresh_pg.broker_url = private_redis.url
    fresh_pg.extra.update(FAST)
    yield fresh_pg
    _kill_all(fresh_pg)


def _kill_all(stack: Stack) -> None:
    """SIGKILL every process the test started: nothing of theirs is needed any more, and it is fast."""
    for proc in stack.procs:
        proc.kill(signal.SIGKILL)
    for proc in stack.procs:
        proc.popen.wait(timeout=10)


@pytest.fixture(scope="module")
def module_fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Like `fstack`, shared by the tests of one module (they start its worker and beat once)."""
    require("PostgreSQL", check_postgres)
    require("redis-server", _redis_server_binary)
    folder = tmp_path_factory.mktemp("faults-module")
    server = PrivateRedis(folder / "redis")
    server.start()
    url = create_database()
    stack = Stack("pg-private-redis", folder / "home", url, server.url, extra={"EXO_QUEUE_PREFIX": uid("t"), **FAST})
    try:
        yield stack
    finally:
        _kill_all(stack)
        stack.stop_all()
        drop_database(url)
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [line for f in _FIGURES for line in f.lines()]
    if lines:
        terminalreporter.section("fault-suite figures")
        for line in lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(also in {_FIGURES[0].path})")
