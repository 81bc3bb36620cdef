"""The ledger's share of a state, without Celery's: `python -m bench.ledger [--width 1000] [--chain 200]`.

Runs exo_celery's task body (`Worker.run_state`: claim, run the node,
complete, publish) in this one process, state after state, against a fresh
PostgreSQL database (or the embedded SQLite ledger with `--sqlite`), and
reports per state: wall time and CPU time of each step, SQL statements,
transactions and pool checkouts. Nothing consumes the published messages
(Redis db 11 is flushed at the end), so this is the ledger's critical path per
hop, with no worker, broker delivery or contention in it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import sqlcount
from .cases import chain_graph, fan_graph
from .harness import NAMESPACE, REDIS_URL, Bench, RunLock, create_database, drop_database, flush_redis


class Timed:
    """Wraps a bound method of one object and adds up its wall and CPU time."""

    def __init__(self, owner: Any, name: str, totals: dict[str, list[float]]) -> None:
        self.inner = getattr(owner, name)
        self.key = name
        self.totals = totals
        setattr(owner, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            return self.inner(*args, **kwargs)
        finally:
            t = self.totals.setdefault(self.key, [0.0, 0.0])
            t[0] += time.perf_counter() - w
            t[1] += time.process_time() - c


def queued(worker: Any, run_id: str) -> list[str]:
    from sqlalchemy import select

    from exo_celery.ledger.tables import states

    with worker.repo.engine.connect() as conn:
        q = select(states.c.id).where(states.c.run_id == run_id, states.c.status == "QUEUED")
        return list(conn.execute(q.order_by(states.c.created_at)).scalars())


def drive(worker: Any, run_id: str) -> int:
    """Run the run's QUEUED states until none is left; returns how many ran."""
    ran = 0
    while ids := queued(worker, run_id):
        for state_id in ids:
            worker.run_state(state_id, run_id)
            ran += 1
    return ran


def measure(bench: Bench, label: str, graph: str, nodes: list[Any], profile: bool = False) -> None:
    from exo_celery.celery_app import make_app
    from exo_celery.tasks import Worker

    from . import nodes as bench_nodes

    settings = bench.settings()
    worker = Worker(make_app(settings), settings, {n.__name__: n for n in bench_nodes.NODES})
    manager = bench.manager()
    manager.upsert_graph_sync(graph, nodes, secrets={})
    drive(worker, manager.trigger_sync(graph)["run_id"])  # warm-up: connections, caches
    totals: dict[str, list[float]] = {}
    Timed(worker.transitions, "claim", totals)
    Timed(worker.transitions, "complete", totals)
    Timed(worker.repo, "read_store", totals)
    import exo_celery.tasks as tasks_module

    publish = tasks_module.publish
    tasks_module.publish = lambda *a, **k: _timed_publish(publish, totals, *a, **k)  # type: ignore[assignment]
    try:
        run_id = manager.trigger_sync(graph)["run_id"]
        before = Counter(sqlcount._counts)
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            profiler.start()
        w0, c0 = time.perf_counter(), time.process_time()
        ran = drive(worker, run_id)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if profiler is not None:
            profiler.stop()
        counts = Counter(sqlcount._counts) - before
    finally:
        tasks_module.publish = publish  # type: ignore[assignment]
    status = manager.get_run_sync(run_id)["status"]
    print(f"\n{label}: {ran} executed states, run {status}, {wall / ran * 1000:.2f} ms wall / {cpu / ran * 1000:.2f} "
          f"ms CPU per state (this process; the database server's time shows in wall only)")  # fmt: skip
    for key in ("claim", "complete", "publish"):
        w, c = totals.get(key, [0.0, 0.0])
        print(f"  {key:<9} {w / ran * 1000:6.2f} ms wall  {c / ran * 1000:6.2f} ms CPU")
    other_w = (wall - sum(v[0] for v in totals.values())) / ran * 1000
    other_c = (cpu - sum(v[1] for v in totals.values())) / ran * 1000
    print(f"  {'rest':<9} {other_w:6.2f} ms wall  {other_c:6.2f} ms CPU  (node, logging, the driver's polling)")
    per = {k: round(v / ran, 2) for k, v in sorted(counts.items())}
    print(f"  per state: {per}")
    print("  (statements include this driver's one SELECT of QUEUED ids per batch)")
    if profiler is not None:
        print(profiler.output_text(unicode=False, color=False, show_all=False, time="percent_of_total"))


def _timed_publish(publish: Any, totals: dict[str, list[float]], *args: Any, **kwargs: Any) -> Any:
    w, c = time.perf_counter(), time.process_time()
    try:
        return publish(*args, **kwargs)
    finally:
        t = totals.setdefault("publish", [0.0, 0.0])
        t[0] += time.perf_counter() - w
        t[1] += time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--sqlite", action="store_true", help="the embedded SQLite ledger instead of PostgreSQL")
    parser.add_argument("--profile", action="store_true", help="also print a pyinstrument profile of each case")
    args = parser.parse_args(argv)
    sqlcount.install(write=False)
    from exo_celery.ledger.repo import Repo
    from exo_celery.node import node_schema

    from . import nodes as bench_nodes

    lock = RunLock()
    root = Path(tempfile.mkdtemp(prefix="exo-ledger-"))
    database_url = None if args.sqlite else create_database()
    bench = Bench(root, database_url, REDIS_URL)
    try:
        settings = bench.settings()
        Repo(settings.ledger_url).register_nodes(
            NAMESPACE, {n.__name__: node_schema(n) for n in bench_nodes.NODES}, "ledger-bench"
        )
        ledger = "SQLite" if args.sqlite else "PostgreSQL"
        if args.width:
            measure(
                bench,
                f"{ledger}, fan-out {args.width} + unite",
                f"fan{args.width}",
                fan_graph(args.width),
                args.profile,
            )
        if args.chain:
            measure(
                bench, f"{ledger}, linear {args.chain}", f"chain{args.chain}", chain_graph(args.chain), args.profile
            )
    finally:
        if database_url:
            drop_database(database_url)
        flush_redis()
        lock.release()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
