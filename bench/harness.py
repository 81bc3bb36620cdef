"""What the benchmark driver and the profiler share: services, the database, worker processes, timing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
SECRETS_KEY = "jYH2Qn7yQ5m7k3h1F1m9d4y0Hq6QF0x5uT5rQkB8Jkw="
NAMESPACE = "bench"
QUEUE_PREFIX = "benchexo"
TERMINAL = ("SUCCESS", "FAILED", "CANCELLED")


def create_database() -> str:
    """A fresh PostgreSQL database for this run; returns its URL."""
    import psycopg

    name = f"exo_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


LOCK_KEY = "bench:running"


def flush_redis() -> None:
    """Empty the benchmark's own Redis database (never any other), keeping the run lock."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(count=1000):
        if key != LOCK_KEY.encode():
            client.delete(key)


class RunLock:
    """One benchmark at a time on a Redis database: the workers' queues and the flushes are shared.

    The key expires 60 s after its holder stops refreshing it (a killed run frees it within a minute).
    """

    def __init__(self) -> None:
        import os
        import socket
        import threading

        import redis

        self.client = redis.Redis.from_url(REDIS_URL)
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        if not self.client.set(LOCK_KEY, self.me, nx=True, ex=60):
            holder = self.client.get(LOCK_KEY)
            raise SystemExit(
                f"another benchmark ({holder!r}) is running on {REDIS_URL}; wait for it (the lock expires 60 s "
                "after its run stops) or point BENCH_REDIS_URL at another database"
            )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(20):
            self.client.set(LOCK_KEY, self.me, ex=60)

    def release(self) -> None:
        self._stop.set()
        if self.client.get(LOCK_KEY) == self.me.encode():
            self.client.delete(LOCK_KEY)


class WorkerDied(RuntimeError):
    """A worker process exited while the benchmark waited for it."""


def check_all(procs: list[Proc]) -> None:
    for proc in procs:
        proc.check()


@dataclass
class Proc:
    """A worker in its own process group, logging to a file."""

    popen: subprocess.Popen[bytes]
    log: Path
    label: str
    nodename: str = ""  # the Celery node name, for remote control

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.popen.returncode}):\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{needle!r} not seen in {self.log} after {timeout} s:\n{self.text()[-3000:]}")

    def check(self) -> None:
        """Raise WorkerDied when the process has exited (a crashed worker would otherwise hang a wait)."""
        if self.popen.poll() is not None:
            tail = "\n".join(self.text().splitlines()[-25:])
            raise WorkerDied(f"{self.label} worker exited with {self.popen.returncode}; log {self.log}:\n{tail}")

    def pids(self) -> list[int]:
        """The main process and its pool children."""
        import psutil

        try:
            main = psutil.Process(self.popen.pid)
            return [main.pid, *(c.pid for c in main.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident memory of the main process plus its pool children, in bytes."""
        import psutil

        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self) -> None:
        if self.popen.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.popen.wait(timeout=5)
        self._killpg(signal.SIGKILL)  # orphaned pool children, if any

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Bench:
    """One benchmark run's ledger, broker, folders and processes."""

    home: Path
    database_url: str | None
    broker_url: str | None
    loglevel: str = "INFO"
    sql_dir: Path | None = None
    nodes: str = "bench.nodes:NODES"  # the worker's --nodes (a module may patch things for an experiment)
    namespace: str = NAMESPACE  # workers of different namespaces can run side by side (own queues)
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXO_", "BENCH_SQL_DIR"))}
        env.update(
            EXO_HOME=str(self.home),
            EXO_SECRETS_KEY=SECRETS_KEY,
            EXO_QUEUE_PREFIX=QUEUE_PREFIX,
            BENCH_REDIS_URL=REDIS_URL,
            PYTHONPATH=str(ROOT),
        )
        if self.database_url:
            env["EXO_DATABASE_URL"] = self.database_url
        if self.broker_url:
            env["EXO_BROKER_URL"] = self.broker_url
        if self.sql_dir is not None:
            env["BENCH_SQL_DIR"] = str(self.sql_dir)
        env.update(self.extra_env)
        return env

    def settings(self) -> Any:
        from exo_celery import Settings

        values = {
            "home": self.home,
            "secrets_key": SECRETS_KEY,
            "queue_prefix": QUEUE_PREFIX,
            "database_url": self.database_url,
            "broker_url": self.broker_url,
        }
        return Settings(**{k: v for k, v in values.items() if v is not None})

    def manager(self) -> Any:
        from exo_celery import StateManager

        return StateManager(self.namespace, settings=self.settings(), validation_timeout=60)

    def spawn(self, argv: list[str], label: str) -> Proc:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / f"{label}-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, cwd=ROOT, env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(popen, log, label)
        self.procs.append(proc)
        return proc

    def start_exo_worker(self, label: str = "exo") -> Proc:
        name = f"{label}{uuid.uuid4().hex[:4]}"
        argv = [sys.executable, "-m", "exo_celery.cli", "worker", "--namespace", self.namespace]
        argv += ["--nodes", self.nodes, "--name", name]
        argv += ["--concurrency", "2", "--pool", "prefork", "--loglevel", self.loglevel]
        proc = self.spawn(argv, label)
        proc.nodename = f"{name}@{socket.gethostname()}"
        proc.wait_for(" ready.")
        return proc

    def start_plain_worker(self) -> Proc:
        celery = str(Path(sys.executable).with_name("celery"))
        argv = [celery, "-A", "bench.plain", "worker", "-Q", "bench.plain", "-c", "2", "-P", "prefork", "-E"]
        name = f"plain{uuid.uuid4().hex[:4]}"
        argv += ["-n", f"{name}@%h", f"--loglevel={self.loglevel}"]
        proc = self.spawn(argv, "plain")
        proc.nodename = f"{name}@{socket.gethostname()}"
        proc.wait_for(" ready.")
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


class Ledger:
    """Direct reads of the runs table, for timing without the client's 0.5 s polling."""

    def __init__(self, database_url: str | None, home: Path) -> None:
        self.watch: list[Proc] = []  # workers that must stay alive while we wait
        self.sqlite = database_url is None
        if self.sqlite:
            import sqlite3

            home.mkdir(parents=True, exist_ok=True)
            self.conn: Any = sqlite3.connect(str(home / "ledger.db"), timeout=30, isolation_level=None)
            self.mark = "?"
        else:
            import psycopg

            self.conn = psycopg.connect(database_url, autocommit=True)
            self.mark = "%s"

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql.replace("?", self.mark), params).fetchall())

    def wait_run(self, run_id: str, timeout: float, interval: float = 0.02) -> tuple[str, float, float, float]:
        """(status, created_at, started_at, finished_at) once the run is terminal."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query("SELECT status, created_at, started_at, finished_at FROM exo_runs WHERE id = ?", run_id)
            if rows and rows[0][0] in TERMINAL:
                return rows[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} not terminal after {timeout} s: {rows}")
            check_all(self.watch)
            time.sleep(interval)

    def wait_graph_runs(self, graph: str, count: int, timeout: float) -> tuple[int, float, float]:
        """Wait until `count` runs of `graph` are terminal: (failed, first started_at, last finished_at)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(
                "SELECT count(*), sum(CASE WHEN status = 'SUCCESS' THEN 0 ELSE 1 END), min(started_at), "
                "max(finished_at) FROM exo_runs WHERE graph_name = ? AND status IN ('SUCCESS', 'FAILED', 'CANCELLED')",
                graph,
            )
            done, failed, first, last = rows[0]
            if done >= count:
                return int(failed or 0), float(first), float(last)
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {count} runs of {graph} finished after {timeout} s")
            check_all(self.watch)
            time.sleep(0.05)

    def close(self) -> None:
        self.conn.close()


def tear_down(bench: Bench, ledger: Ledger, database_url: str, lock: RunLock) -> None:
    """What every bench entry does last: stop its processes, drop its database, empty its Redis database, unlock."""
    ledger.close()
    bench.stop_all()
    drop_database(database_url)
    flush_redis()
    lock.release()


def markdown_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Rows as a markdown table with padded columns (what every bench entry prints)."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(lines)


def log(message: str) -> None:
    """A timestamped progress line on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Peak:
    """The peak of `sample()` (bytes) every 0.1 s, since the start or the last `reset()`."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self.sample = sample
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(0.1)

    def reset(self) -> None:
        self.peak = self.sample()

    def read(self) -> int:
        return max(self.peak, self.sample())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
