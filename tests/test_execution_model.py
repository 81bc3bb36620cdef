"""The execution model on real workers: what `workers=N` means, which pools run async nodes, bounded
ledger connections (also behind PgBouncer in transaction mode), and pools that are refused."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exo_celery import ConfigError, GraphNodeModel, Runtime
from exo_celery.ledger.db import MAX_POOL_SIZE, WORKER_APPLICATION_NAME

from .execution_nodes import NODES, Gather
from .support import POSTGRES_ADMIN_URL, REDIS_URL, ROOT, Proc, Stack, run, uid
from .timing import private_pg, wait_until

NS = "exec"
SPEC = "tests.execution_nodes:NODES"


def start(stack: Stack, *options: str, namespace: str = NS, wait: bool = True) -> Proc:
    """`exo-celery worker` serving tests.execution_nodes with `options` as given (no -P: the default pool)."""
    argv = ["worker", "--namespace", namespace, "--nodes", SPEC, "--name", f"x{uuid.uuid4().hex[:6]}", *options]
    proc = stack._spawn(argv, f"worker-{namespace}", None)
    if wait:
        proc.wait_for(" ready.")
    return proc


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def fan_graph(m, name: str, n: int, nodes: list[tuple[str, dict[str, str]]]) -> None:  # type: ignore[no-untyped-def]
    """fan (n outputs) -> each of `nodes` once per output."""
    ids = [f"n{k}" for k in range(len(nodes))]
    graph = [GraphNodeModel(node_name="Fan", identifier="fan", inputs={"n": str(n)}, next_nodes=ids)]
    for ident, (node, inputs) in zip(ids, nodes, strict=True):
        graph.append(GraphNodeModel(node_name=node, identifier=ident, inputs={**inputs, "i": "${{ fan.outputs.i }}"}))
    run(m.upsert_graph(name, graph, secrets={}))


def pids_in(path: Path) -> set[int]:
    return {int(line.split()[0]) for line in path.read_text().splitlines()}


@pytest.fixture(params=["pg_redis", "embedded"])
def any_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A private PostgreSQL + Redis stack, or the embedded default in a home of its own."""
    if request.param == "embedded":
        stack = Stack("embedded-private", tmp_path / "home")
        try:
            yield stack
        finally:
            stack.stop_all()
    else:
        with private_pg(tmp_path / "home") as stack:
            yield stack


def test_concurrent_async_and_sync_nodes_share_one_process_by_default(any_stack: Stack, tmp_path: Path) -> None:
    """`-c 20` on the default pool: 10 async and 10 sync executions at once, all in the one worker process."""
    worker = start(any_stack, "--concurrency", "20")
    assert children(worker.popen.pid) == []  # threads, not 20 processes
    m = any_stack.manager(NS)
    name = uid()
    a, s = tmp_path / "async", tmp_path / "sync"
    # Each Gather waits until all 10 of its kind (and so all 20 executions) are running at the same time.
    fan_graph(m, name, 10, [("Gather", {"path": str(a), "n": "10"}), ("SyncGather", {"path": str(s), "n": "10"})])
    run_id = run(m.trigger(name))["run_id"]
    done = run(m.wait(run_id, timeout=60))
    errors = [x["error"] for x in run(m.list_states(run_id)) if x["error"]]
    assert done["status"] == "SUCCESS", errors
    assert pids_in(a) == pids_in(s) == {worker.popen.pid}
    assert "event loop is already running" not in worker.text()


def test_prefork_children_and_solo_each_run_async_nodes_on_their_own_loop(tmp_path: Path) -> None:
    with private_pg(tmp_path / "home") as stack:
        prefork = start(stack, "--pool", "prefork", "--concurrency", "2")
        m = stack.manager(NS)
        name = uid()
        path = tmp_path / "prefork"
        fan_graph(m, name, 2, [("Gather", {"path": str(path), "n": "2"})])  # both children at once
        assert run(m.wait(run(m.trigger(name))["run_id"], timeout=60))["status"] == "SUCCESS"
        assert len(pids_in(path)) == 2 and pids_in(path) <= set(children(prefork.popen.pid))
        prefork.stop()

        solo = start(stack, "--pool", "solo")
        name = uid()
        path, touched = tmp_path / "solo", tmp_path / "touched"
        fan_graph(m, name, 2, [("Gather", {"path": str(path), "n": "1"}), ("Touch", {"path": str(touched)})])
        assert run(m.wait(run(m.trigger(name))["run_id"], timeout=60))["status"] == "SUCCESS"
        assert pids_in(path) == {solo.popen.pid} and len(touched.read_text().splitlines()) == 2


def test_workers_n_means_n_executions_in_one_process_and_green_pools_are_refused() -> None:
    runtime = Runtime(NS, "r", NODES, workers=40)
    argv = runtime.worker_argv()
    assert argv[argv.index("-P") + 1] == "threads" and argv[argv.index("-c") + 1] == "40"
    assert runtime.app.conf.worker_pool == "threads" and runtime.app.conf.worker_concurrency == 40
    assert Runtime(NS, "r", NODES).concurrency == 4  # Exosphere's default workers=4
    assert Runtime(NS, "r", NODES, pool="processes").pool == "prefork"
    for pool in ("gevent", "eventlet"):
        with pytest.raises(ConfigError, match=f"'{pool}' is not supported.*threads"):
            Runtime(NS, "r", NODES, pool=pool)
    with pytest.raises(ConfigError, match="unknown Celery pool 'fibers'"):
        Runtime(NS, "r", [Gather], pool="fibers")


def test_green_pools_are_refused_by_both_commands(tmp_path: Path) -> None:
    pytest.importorskip("gevent")  # a test dependency; without it Celery itself refuses -P gevent
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env.update(EXO_HOME=str(tmp_path), PYTHONPATH=str(ROOT), EXO_NAMESPACE=NS, EXO_NODES=SPEC)
    ours = subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", "worker", "--nodes", SPEC, "-n", NS, "-P", "gevent"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert ours.returncode != 0 and "'gevent' is not supported" in ours.stderr
    assert "Traceback" not in ours.stderr
    celery = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "gevent", "-c", "5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert celery.returncode != 0 and "'gevent' is not supported" in celery.stdout + celery.stderr


def worker_connections(database_url: str) -> int:
    database = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, WORKER_APPLICATION_NAME),
        ).fetchone()
    return int(row[0]) if row else 0


def watch_connections(database_url: str, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak.append(worker_connections(database_url))
        stop.wait(0.05)


def test_ledger_connections_stay_bounded_with_100_async_states_at_once(tmp_path: Path) -> None:
    with private_pg(tmp_path / "home") as stack:
        assert stack.database_url
        worker = start(stack, "--concurrency", "100")
        m = stack.manager(NS)
        name = uid()
        started, done = tmp_path / "started", tmp_path / "done"
        inputs = {"seconds": "1", "started": str(started), "done": str(done)}
        fan_graph(m, name, 100, [("AsyncWait", inputs)])
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=watch_connections, args=(stack.database_url, stop, peak))
        watcher.start()
        try:
            assert run(m.wait(run(m.trigger(name))["run_id"], timeout=90))["status"] == "SUCCESS"
        finally:
            stop.set()
            watcher.join()
        assert len(done.read_text().splitlines()) == 100
        # One process; at most MAX_POOL_SIZE + 1 connections for transitions and 2 more (far below 100 + 4).
        assert 1 <= max(peak) <= MAX_POOL_SIZE + 3, peak
        assert children(worker.popen.pid) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer() -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the local PostgreSQL, on a free port."""
    from .support import require

    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    require("pgbouncer (Debian package)", lambda: binary or (_ for _ in ()).throw(FileNotFoundError("pgbouncer")))
    assert binary
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="exo-pgbouncer-"))
    home.chmod(0o755)  # pgbouncer drops root for the postgres user
    (home / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432 user=postgres\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\n"
        "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 10\n"
    )
    argv = [binary, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(home / "pgbouncer.ini")]
    log = (home / "log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: _accepts(port) or proc.poll() is not None, timeout=15, what="pgbouncer to listen")
        assert proc.poll() is None, (home / "log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_workers_and_client_run_through_pgbouncer_in_transaction_mode(tmp_path: Path, pgbouncer: int) -> None:
    with private_pg(tmp_path / "home") as direct:
        assert direct.database_url
        database = direct.database_url.rsplit("/", 1)[1]
        url = f"postgresql://postgres@127.0.0.1:{pgbouncer}/{database}?pgbouncer=true"
        stack = Stack("pgbouncer", direct.home, url, REDIS_URL, extra=direct.extra)
        try:
            start(stack, "--concurrency", "10")
            m = stack.manager(NS)
            name = uid()
            gathered = tmp_path / "gathered"
            fan_graph(m, name, 10, [("Gather", {"path": str(gathered), "n": "10"})])
            # Enough states on one pool of 10 server connections that statements of different
            # executions (and their would-be prepared statements) share server connections.
            for _ in range(2):
                gathered.unlink(missing_ok=True)
                done = run(m.wait(run(m.trigger(name))["run_id"], timeout=60))
                assert done["status"] == "SUCCESS", [s["error"] for s in run(m.list_states(done["run_id"]))]
        finally:
            stack.stop_all()
