"""Async I/O benchmark (issue 10): `python -m bench.async_io [--quick]`.

A root fans out to N async nodes that each await 1 s of simulated I/O, on one exo_celery runtime
(`exo-celery worker -c W`, the default `threads` pool: W executions at once in one process, async nodes
on its one event loop). Printed:

- wall time of 1,000 nodes at workers=100 (target <= 15 s; the ideal is 10 s);
- the same graph at Exosphere's default workers=4 (100 nodes measured, scaled to 1,000);
- plain Celery with gevent (`-P gevent -c 100`) running the same fan-out as sync sleeping tasks;
- peak RSS of the runtime's process tree at workers=100 vs workers=2 (target <= 2x);
- peak PostgreSQL connections of the runtime (target <= workers + 4).

A fresh PostgreSQL database (dropped at the end) and Redis database 11 (the bench.run lock is taken).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg

from exo_celery import GraphNodeModel
from exo_celery.ledger.db import WORKER_APPLICATION_NAME

from .harness import (
    POSTGRES_ADMIN_URL,
    REDIS_URL,
    Bench,
    Ledger,
    Proc,
    RunLock,
    create_database,
    drop_database,
    flush_redis,
    log,
)

NODES = "bench.io_nodes:NODES"


def graph(count: int, seconds: float) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="IoFan", identifier="fan", inputs={"count": str(count)}, next_nodes=["wait"]),
        GraphNodeModel(
            node_name="IoWait",
            identifier="wait",
            inputs={"item": "${{ fan.outputs.item }}", "seconds": str(seconds)},
        ),
    ]


@dataclass
class Sampler:
    """Peak RSS of a process tree and peak PostgreSQL connections of workers, sampled every 0.1 s."""

    proc: Proc
    database: str | None = None
    rss: list[int] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            while not self._stop.is_set():
                self.rss.append(self.proc.rss())
                self.processes.append(len(self.proc.pids()))
                if self.database:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                        (self.database, WORKER_APPLICATION_NAME),
                    ).fetchone()
                    self.connections.append(int(row[0]) if row else 0)
                self._stop.wait(0.1)


def tree_cpu(proc: Proc) -> float:
    """User + system CPU seconds of a process tree so far."""
    total = 0.0
    for pid in proc.pids():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def start_runtime(bench: Bench, workers: int) -> Proc:
    name = f"io{workers}x{uuid.uuid4().hex[:4]}"
    argv = [sys.executable, "-m", "exo_celery.cli", "worker", "--namespace", bench.namespace, "--nodes", NODES]
    argv += ["--name", name, "--concurrency", str(workers), "--loglevel", bench.loglevel]
    proc = bench.spawn(argv, f"runtime-w{workers}")
    proc.wait_for(" ready.")
    return proc


def exo_case(bench: Bench, ledger: Ledger, workers: int, count: int, seconds: float) -> dict[str, float]:
    """One run of the graph on a fresh runtime with `workers`: wall time, peak RSS (MiB), peak connections."""
    proc = start_runtime(bench, workers)
    ledger.watch = [proc]
    manager = bench.manager()
    name = f"io{count}"
    manager.upsert_graph_sync(name, graph(count, seconds), secrets={})
    assert bench.database_url
    with Sampler(proc, bench.database_url.rsplit("/", 1)[1]) as sampler:
        idle_rss = proc.rss()
        cpu0 = tree_cpu(proc)
        t0 = time.time()
        run_id = manager.trigger_sync(name)["run_id"]
        status, _created, _started, finished = ledger.wait_run(run_id, timeout=600, interval=0.05)
        cpu = tree_cpu(proc) - cpu0
    bench.stop(proc)
    if status != "SUCCESS":
        raise RuntimeError(f"run {run_id} ended {status}; log {proc.log}")
    return {
        "wall": finished - t0,
        "idle_rss": idle_rss / 2**20,
        "peak_rss": max(sampler.rss) / 2**20,
        "peak_connections": float(max(sampler.connections)),
        "processes": float(max(sampler.processes)),
        "cpu_ms_per_state": 1000 * cpu / (count + 1),
    }


def plain_case(bench: Bench, count: int, seconds: float, concurrency: int) -> dict[str, float]:
    """Plain Celery, gevent pool, the same fan-out as sync sleeping tasks sent by a root task."""
    import redis

    celery = str(Path(sys.executable).with_name("celery"))
    argv = [celery, "-A", "bench.io_plain", "worker", "-Q", "bench.io", "-P", "gevent", "-c", str(concurrency)]
    argv += ["-n", f"iogevent{uuid.uuid4().hex[:4]}@%h", f"--loglevel={bench.loglevel}"]
    proc = bench.spawn(argv, "plain-gevent")
    proc.wait_for(" ready.")
    from .io_plain import root

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=30)
    key = f"bench:io:{uuid.uuid4().hex[:8]}"
    with Sampler(proc) as sampler:
        t0 = time.time()
        root.apply_async((key, count, seconds))
        deadline, item = time.monotonic() + 600, None
        while item is None and time.monotonic() < deadline:
            item = client.blpop([key], timeout=2)
            proc.check()
    bench.stop(proc)
    if item is None:
        raise RuntimeError(f"plain gevent run did not finish; log {proc.log}")
    return {"wall": float(item[1]) - t0, "peak_rss": max(sampler.rss) / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async_io", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 nodes instead of 1,000 (and 40 at workers=4)")
    parser.add_argument("--seconds", type=float, default=1.0, help="simulated I/O per node (default 1 s)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    count, small = (200, 40) if args.quick else (1000, 100)
    lock = RunLock()
    load = os.getloadavg()
    flush_redis()  # our Redis database only (the lock is ours): no task of an interrupted run is left
    root = Path(tempfile.mkdtemp(prefix="exo-bench-io-"))
    database_url = create_database()
    bench = Bench(root / "pg", database_url, REDIS_URL, args.loglevel, namespace="benchio")
    ledger = Ledger(database_url, bench.home)
    results: dict[str, dict[str, float]] = {}

    def note(key: str, value: dict[str, float]) -> None:
        results[key] = value
        log(f"{key}: {', '.join(f'{k}={v:.2f}' for k, v in value.items())}")

    try:
        log(f"{count} async nodes x {args.seconds} s at workers=100")
        note("w100", exo_case(bench, ledger, 100, count, args.seconds))
        log(f"{small} nodes at workers=4 (scaled to {count})")
        note("w4", exo_case(bench, ledger, 4, small, args.seconds))
        log("20 nodes at workers=2 (RSS baseline)")
        note("w2", exo_case(bench, ledger, 2, 20, args.seconds))
        log(f"plain Celery, gevent -c 100, {count} sync sleeping tasks")
        note("gevent", plain_case(bench, count, args.seconds, 100))
    finally:
        bench.stop_all()
        ledger.conn.close()
        drop_database(database_url)
        lock.release()
    w100, w4, w2, gevent = results["w100"], results["w4"], results["w2"], results["gevent"]
    ideal = count * args.seconds / 100
    after = os.getloadavg()
    print(f"\nasync I/O: a root fanning out to {count} async nodes, each awaiting {args.seconds:g} s")
    print(f"  load average (1 min) at start {load[0]:.1f}, at end {after[0]:.1f}, on {os.cpu_count()} CPUs")
    print(
        f"  exo_celery workers=100 (threads, one process): {w100['wall']:.1f} s   (ideal {ideal:.0f} s, target <= 15 s)"
    )
    print(
        f"  exo_celery workers=4: {w4['wall']:.1f} s for {small}, "
        f"scaled x{count // small}: {w4['wall'] * count / small:.0f} s"
    )
    print(f"  plain Celery -P gevent -c 100, sync sleeps:    {gevent['wall']:.1f} s")
    print(f"  ratio exo workers=100 / plain gevent:          {w100['wall'] / gevent['wall']:.2f}x")
    ratio = w100["peak_rss"] / w2["peak_rss"]
    print(
        f"  peak RSS workers=100: {w100['peak_rss']:.0f} MiB ({w100['processes']:.0f} process), workers=2: "
        f"{w2['peak_rss']:.0f} MiB -> {ratio:.2f}x (target <= 2x); plain gevent: {gevent['peak_rss']:.0f} MiB"
    )
    print(
        f"  peak PostgreSQL connections: workers=100: {w100['peak_connections']:.0f} (target <= 104), "
        f"workers=4: {w4['peak_connections']:.0f}, workers=2: {w2['peak_connections']:.0f}"
    )
    log(f"logs in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
