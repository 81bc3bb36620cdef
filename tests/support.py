"""Test helpers: real services found through the environment, and worker / beat processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from exo_celery import Settings, StateManager

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_ADMIN_URL = os.environ.get("EXO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EXO_TEST_REDIS", "redis://127.0.0.1:6379/7")
RABBITMQ_URL = os.environ.get("EXO_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
SECRETS_KEY = "jYH2Qn7yQ5m7k3h1F1m9d4y0Hq6QF0x5uT5rQkB8Jkw="

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine of the async API."""
    return asyncio.run(coro)


def uid(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def require(service: str, check: Callable[[], object]) -> None:
    """Skip when a server is unreachable; under CI=true fail loudly instead."""
    try:
        check()
    except Exception as exc:
        message = f"{service} is unreachable: {type(exc).__name__}: {exc}"
        if CI:
            pytest.fail(f"{message} (CI=true: tests against real servers must run)", pytrace=False)
        pytest.skip(message)


def check_postgres() -> None:
    import psycopg

    psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()


def check_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()


def check_rabbitmq() -> None:
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)


def create_database() -> str:
    """A fresh PostgreSQL database for this test session; returns its URL."""
    import psycopg

    name = f"exo_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Proc:
    """A worker or beat process in its own process group, logging to a file."""

    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited ({self.popen.returncode}):\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{needle!r} not seen in {self.log} after {timeout} s:\n{self.text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a prefork worker's children too)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(timeout=5)
        self.kill(signal.SIGKILL)  # orphaned pool children, if any


@dataclass
class Stack:
    """One ledger + broker pair, and the processes a test started on it."""

    name: str
    home: Path
    database_url: str | None = None
    broker_url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
        env.update(EXO_HOME=str(self.home), EXO_SECRETS_KEY=SECRETS_KEY, PYTHONPATH=str(ROOT), **self.extra)
        if self.database_url:
            env["EXO_DATABASE_URL"] = self.database_url
        if self.broker_url:
            env["EXO_BROKER_URL"] = self.broker_url
        return env

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": self.home,
            "secrets_key": SECRETS_KEY,
            "database_url": self.database_url,
            "broker_url": self.broker_url,
        }
        for key, value in self.extra.items():
            values[key.removeprefix("EXO_").lower()] = value
        values.update(overrides)
        return Settings(**{k: v for k, v in values.items() if v is not None})

    def manager(self, namespace: str, **overrides: Any) -> StateManager:
        return StateManager(namespace, settings=self.settings(**overrides), validation_timeout=30)

    def _spawn(self, argv: list[str], label: str, env: dict[str, str] | None, wrap: list[str] | None = None) -> Proc:
        """Start `exo-celery <argv>`, under the command `wrap` if given (e.g. faketime)."""
        log = self.home / f"{label}-{uuid.uuid4().hex[:6]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*(wrap or []), sys.executable, "-m", "exo_celery.cli", *argv],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(
        self,
        namespace: str,
        nodes: str = "tests.nodes:NODES",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        pool: str = "prefork",
        wait: bool = True,
        wrap: list[str] | None = None,
    ) -> Proc:
        argv = [
            "worker",
            "--namespace",
            namespace,
            "--nodes",
            nodes,
            "--name",
            f"w{uuid.uuid4().hex[:6]}",
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--loglevel",
            "INFO",
        ]
        proc = self._spawn(argv, f"worker-{namespace}", env, wrap)
        if wait:
            proc.wait_for(" ready.")
        return proc

    def start_beat(self, env: dict[str, str] | None = None, wait: bool = True, wrap: list[str] | None = None) -> Proc:
        proc = self._spawn(["beat", "--loglevel", "INFO"], "beat", env, wrap)
        if wait:
            proc.wait_for("beat started")
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs.clear()


@contextmanager
def running_flower(stack: Stack, log: Path, ready_timeout: float = 30.0) -> Iterator[str]:
    """A real Flower (`celery --broker=<the stack's broker> flower`) on a free port; yields its base URL."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", f"--broker={stack.broker_url}", "flower", f"--port={port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthcheck", timeout=2) as response:
                    if response.read().decode().strip() == "OK":
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"Flower did not start:\n{log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
