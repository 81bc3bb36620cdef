"""The scale cases of issue 15 (item 4): `python -m bench.scale [--quick]`.

- **Wide fan-out**: fan-outs of 1,000, 5,000 and 100,000 (20,000 with `--quick`) + unite on one
  worker (`-c 2 -P prefork`, as bench.run's): seconds, time per executed state, the worker's peak RSS
  (main process + pool children) during each run and the driver's own peak RSS.
- **Disk cost per state**: PostgreSQL's size of the ledger's tables after those runs, per state row.
- **Retention purge**: 1,000,000 finished states (copies of a real run's rows, `INSERT ... SELECT
  generate_series`) in runs finished past retention, purged by a real `exo-celery beat` (short
  `EXO_RETENTION_SECONDS`) while a steady stream of one-node runs goes on; the stream's claim
  latency (`started_at - dispatched_at` of each root state) during the purge against without one.

One fresh PostgreSQL database (dropped at the end) and the bench Redis database (flushed, and only
that one), under bench.harness's run lock. Prints a markdown table; `--json PATH` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import Exo, fan_graph, one_graph
from .harness import (
    REDIS_URL,
    Bench,
    Ledger,
    Peak,
    Proc,
    RunLock,
    create_database,
    flush_redis,
    log,
    markdown_table,
    tear_down,
)

SHAPES = {"small": 4, "wide": 499, "wider": 4999}  # purge shapes: fan-out width of the copied run (~2w rows)
LEDGER_TABLES = ("exo_states", "exo_scopes", "exo_runs", "exo_store")
RETENTION = 3600.0  # beat's EXO_RETENTION_SECONDS in the purge case; the copied runs finished 2 days ago
AGE = 2 * 86400.0
PURGE_LINE = re.compile(r"purged \d+ finished run\(s\) past retention in ([0-9.]+) s \(longest transaction ([0-9.]+) s")


@dataclass
class Config:
    widths: tuple[int, ...] = (1000, 5000, 100_000)
    purge_states: int = 1_000_000
    shapes: tuple[tuple[str, int], ...] = (("small", 4), ("wide", 499))  # fan-out width of the copied run
    rate: float = 10.0  # one-node runs per second during the purge case
    window: float = 40.0  # seconds of the steady stream without a purge (before, and after each purge)
    phases: tuple[str, ...] = ("fan", "disk", "purge")
    explain: bool = True  # after the purges, EXPLAIN ANALYZE one batch of the widest shape (rolled back)


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def own_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# -- 1. wide fan-outs -----------------------------------------------------------
def fan_outs(exo: Exo, worker: Proc, cfg: Config, res: Results) -> None:
    """Each width once, on the same worker, smallest first; per run the worker's and the driver's peak RSS."""
    worker_peak, driver_peak = Peak(worker.rss), Peak(own_rss)
    try:
        exo.fan_out(10)  # warm-up: imports, connections, graph cache
        for width in cfg.widths:
            exo.ensure(f"fan{width}", fan_graph(width))
            worker_peak.reset()
            driver_peak.reset()
            started = loadavg()
            seconds, run_id = exo.run_once(f"fan{width}", fan_graph(width), timeout=4 * 3600)
            executed = width + 2  # fan, one noop per output, gather
            res.figures[f"fan{width}"] = {
                "seconds": seconds,
                "per_state_ms": seconds / executed * 1000,
                "worker_peak_rss_mb": worker_peak.read() / 2**20,
                "driver_peak_rss_mb": driver_peak.read() / 2**20,
                "run_id": run_id,
                "loadavg": f"{started} -> {loadavg()}",
            }
            f = res.figures[f"fan{width}"]
            log(
                f"fan-out {width:,}: {seconds:.1f} s, {f['per_state_ms']:.2f} ms per state, worker peak RSS "
                f"{f['worker_peak_rss_mb']:.1f} MB, driver {f['driver_peak_rss_mb']:.1f} MB (load {f['loadavg']})"
            )
    finally:
        worker_peak.close()
        driver_peak.close()


# -- 2. disk cost per state -----------------------------------------------------
def sizes(ledger: Ledger) -> dict[str, tuple[int, int, int]]:
    """Per ledger table: (heap incl. TOAST, FSM and VM; indexes; total), bytes."""
    rows = ledger.query(
        "SELECT relname, pg_table_size(oid), pg_indexes_size(oid), pg_total_relation_size(oid) FROM pg_class "
        "WHERE relkind = 'r' AND relname = ANY(?)",
        list(LEDGER_TABLES),
    )
    return {name: (int(t), int(i), int(total)) for name, t, i, total in rows}


def disk(ledger: Ledger, res: Results) -> None:
    """The ledger's size per state row after the runs: as the runs left it, and after VACUUM FULL."""
    rows, executed = ledger.query(
        "SELECT count(*), sum(CASE WHEN execution_id IS NULL THEN 1 ELSE 0 END) FROM exo_states"
    )[0]
    if not rows:
        log("disk: the ledger holds no states to measure (run it after the fan phase: --only fan,disk)")
        return
    out: dict[str, Any] = {"state_rows": int(rows), "executed_states": int(executed)}
    out["as_left"] = sizes(ledger)
    for table in LEDGER_TABLES:
        ledger.conn.execute(f"VACUUM FULL {table}")
    out["vacuum_full"] = sizes(ledger)
    res.figures["disk"] = out
    for when in ("as_left", "vacuum_full"):
        total = sum(v[2] for v in out[when].values())
        log(f"disk {when}: {total / 2**20:.1f} MiB for {rows:,} state rows, {total / rows:.0f} B per state row")


# -- 3. retention purge under a steady stream -----------------------------------
def copy_runs(ledger: Ledger, template: str, copies: int, tag: str) -> None:
    """`copies` copies of run `template` (its run, state, scope and store rows), finished AGE seconds earlier.

    Every column of the tables is carried over (so new columns are copied too); ids are new md5 hex
    strings, times are shifted back, and the state ids inside fingerprints and scope ids are new ones.
    """
    from exo_celery.ledger.tables import runs, scopes, states, store

    run = f"md5('{tag}' || g)"
    times = {"due_at", "dispatched_at", "started_at", "finished_at", "lease_until", "created_at", "updated_at"}

    def column(table: Any, name: str) -> str:
        if name == "run_id" or (table is runs and name == "id"):
            return run
        if table is states and name in ("id", "retry_of"):
            return f"CASE WHEN t.{name} IS NULL THEN NULL ELSE md5('{tag}' || g || '/' || t.{name}) END"
        if table is scopes and name == "opener_id":
            return f"md5('{tag}' || g || '/' || t.opener_id)"
        if (table is states and name == "fingerprint") or (table is scopes and name == "id"):  # "<id>@<state id>"
            return f"regexp_replace(t.{name}, '[0-9a-f]{{32}}', md5('{tag}' || g || '/' || t.{name}))"
        if table is runs and name in ("cron_key", "idempotency_key"):
            return "NULL"
        if name in times:
            return f"t.{name} - {AGE}"
        return f"t.{name}"

    for table in (runs, states, scopes, store):
        names = [c.name for c in table.columns]
        key = "id" if table is runs else "run_id"
        sql = (
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(column(table, n) for n in names)} "
            f"FROM {table.name} t, generate_series(1, {copies}) g WHERE t.{key} = '{template}'"
        )
        started = time.monotonic()
        ledger.conn.execute(sql)
        log(f"  copied {table.name} x {copies:,} in {time.monotonic() - started:.1f} s")
    ledger.conn.execute("ANALYZE")


class Stream:
    """One-node runs triggered at a steady rate from a thread; each trigger noted with the current phase."""

    def __init__(self, manager: Any, graph: str, rate: float) -> None:
        self.manager, self.graph, self.rate = manager, graph, rate
        self.phase = "idle"
        self.runs: list[tuple[str, str, float, float]] = []  # (phase, run id, trigger start, trigger seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            phase = self.phase
            if phase != "idle":
                t0 = time.time()
                run_id = self.manager.trigger_sync(self.graph)["run_id"]
                self.runs.append((phase, run_id, t0, time.time() - t0))
            next_at = max(next_at + 1 / self.rate, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latencies(ledger: Ledger, stream: Stream, res: Results) -> None:
    """Per phase: p50/p99/max of claim latency (started_at - dispatched_at), trigger and run latency."""
    rows = ledger.query(
        "SELECT r.id, s.started_at - s.dispatched_at, r.finished_at FROM exo_runs r JOIN exo_states s ON "
        "s.run_id = r.id WHERE r.graph_name = ? AND r.status = 'SUCCESS'",
        stream.graph,
    )
    found = {rid: (float(claim), float(fin)) for rid, claim, fin in rows}
    by_phase: dict[str, dict[str, list[float]]] = {}
    for phase, rid, t0, trig in stream.runs:
        got = by_phase.setdefault(phase, {"claim": [], "trigger": [], "run": [], "missing": []})
        got["trigger"].append(trig)
        if rid in found:
            got["claim"].append(found[rid][0])
            got["run"].append(found[rid][1] - t0)
        else:
            got["missing"].append(1.0)
    out = {}
    for phase, got in by_phase.items():
        out[phase] = {"runs": len(got["trigger"]), "unfinished": len(got["missing"])}
        for what in ("claim", "trigger", "run"):
            if got[what]:
                out[phase][what] = {
                    "p50_ms": pct(got[what], 0.5) * 1000,
                    "p99_ms": pct(got[what], 0.99) * 1000,
                    "max_ms": max(got[what]) * 1000,
                }
        c = out[phase].get("claim", {})
        log(f"  {phase}: {out[phase]['runs']} runs, claim p50 {c.get('p50_ms', 0):.1f} p99 {c.get('p99_ms', 0):.1f} ms")
    res.figures["stream"] = out


def old_runs(ledger: Ledger) -> int:
    """Runs still in the ledger from before the purge's cut-off (by the indexed created_at: a light poll)."""
    return int(ledger.query("SELECT count(*) FROM exo_runs WHERE created_at < ?", time.time() - RETENTION)[0][0])


def deleting(ledger: Ledger) -> bool:
    """Whether a purge batch is under way (its first batch commits only at its end)."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE ?"
    return bool(ledger.query(sql, "DELETE FROM exo_states%")[0][0])


def purge(bench: Bench, exo: Exo, ledger: Ledger, cfg: Config, res: Results) -> None:
    """Baseline stream, then per shape: copy runs, start beat, stream during the purge and after it."""
    stream_graph = "steady"
    exo.ensure(stream_graph, one_graph())
    exo.run_once(stream_graph, one_graph())  # warm-up
    stream = Stream(bench.manager(), stream_graph, cfg.rate)
    beat: Proc | None = None
    res.figures["purge"] = {}
    try:
        stream.phase = "without purge, no beat"
        log(f"stream alone for {cfg.window:.0f} s (load {loadavg()})")
        time.sleep(cfg.window)
        for shape, width in cfg.shapes:
            stream.phase = "idle"
            exo.ensure(f"fan{width}", fan_graph(width))
            _, template = exo.run_once(f"fan{width}", fan_graph(width))
            per_run = int(ledger.query("SELECT count(*) FROM exo_states WHERE run_id = ?", template)[0][0])
            copies = max(1, cfg.purge_states // per_run)
            log(f"{shape}: copying run {template} ({per_run} state rows) {copies:,} times (load {loadavg()})")
            copy_runs(ledger, template, copies, f"{shape}{uuid.uuid4().hex[:6]}")
            runs0 = old_runs(ledger)
            cutoff = time.time() - RETENTION
            states0 = int(ledger.query("SELECT count(*) FROM exo_states WHERE created_at < ?", cutoff)[0][0])
            stream.phase = f"{shape}: beat starting"
            bench.extra_env["EXO_RETENTION_SECONDS"] = str(RETENTION)
            started, load0 = time.time(), loadavg()
            beat = bench.spawn([sys.executable, "-m", "exo_celery.cli", "beat", "--loglevel", "INFO"], "beat")
            del bench.extra_env["EXO_RETENTION_SECONDS"]
            first, last_full = None, started  # first poll that saw a purge begun; last poll that saw none
            while True:
                beat.check()
                polled = time.time()
                runs_left = old_runs(ledger)
                if runs_left == runs0 and not deleting(ledger):
                    last_full = polled
                elif first is None:
                    first = polled
                    stream.phase = f"{shape}: during purge"
                if runs_left == 0:
                    break
                if time.time() - started > 3600:
                    raise TimeoutError(f"{runs_left} runs still not purged after an hour")
                time.sleep(0.25)
            ended = time.time()
            stream.phase = f"{shape}: after purge, beat running"
            ticks = [line for line in beat.text().splitlines() if "purged" in line]
            timed = [tuple(float(x) for x in m.groups()) for m in map(PURGE_LINE.search, ticks) if m]
            res.figures["purge"][shape] = {
                "state_rows_per_run": per_run,
                "runs": runs0,
                "state_rows": states0,
                "seconds_from_beat_start": ended - started,
                "seconds_from_first_delete": ended - last_full,  # at most one poll (0.25 s + 2 queries) more
                "beat_purge_ticks": len(ticks),
                "beat_purge_lines": ticks,
                "longest_tick_s": max((t for t, _ in timed), default=0.0),  # a purge round, in beat's log
                "longest_transaction_s": max((x for _, x in timed), default=0.0),  # one purge batch
                "loadavg": f"{load0} -> {loadavg()}",
            }
            log(
                f"{shape}: purged {runs0:,} runs / {states0:,} state rows in {ended - last_full:.1f} s "
                f"({len(ticks)} beat ticks, longest {res.figures['purge'][shape]['longest_tick_s']:.2f} s, longest "
                f"transaction {res.figures['purge'][shape]['longest_transaction_s']:.2f} s; load {loadavg()})"
            )
            time.sleep(cfg.window)
            bench.stop(beat)
            beat = None
        stream.phase = "idle"
        if cfg.explain:
            explain(exo, ledger, cfg, res)
    finally:
        stream.close()
        if beat is not None:
            bench.stop(beat)
    deadline = time.monotonic() + 120
    while ledger.query("SELECT count(*) FROM exo_runs WHERE graph_name = ? AND finished_at IS NULL", stream_graph)[0][
        0
    ] and time.monotonic() < deadline:
        time.sleep(0.5)
    latencies(ledger, stream, res)


def explain(exo: Exo, ledger: Ledger, cfg: Config, res: Results) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of one batch of `Repo.purge_finished_runs`' statements (rolled back),
    on runs of the widest shape: where a batch's time goes."""
    shape, width = cfg.shapes[-1]
    _, template = exo.run_once(f"fan{width}", fan_graph(width))
    per_run = int(ledger.query("SELECT count(*) FROM exo_states WHERE run_id = ?", template)[0][0])
    copy_runs(ledger, template, max(1, cfg.purge_states // per_run), f"x{uuid.uuid4().hex[:6]}")
    cutoff = time.time() - RETENTION
    select = (
        "SELECT id FROM exo_runs WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED') AND finished_at < "
        f"{cutoff} LIMIT 500"
    )
    plans: dict[str, str] = {}
    with ledger.conn.transaction(force_rollback=True):
        ids = [r[0] for r in ledger.conn.execute(select).fetchall()]
        inlist = ", ".join(f"'{i}'" for i in ids)
        for name, sql in (
            ("select runs", select),
            ("delete exo_states", f"DELETE FROM exo_states WHERE run_id IN ({inlist})"),
            ("delete exo_scopes", f"DELETE FROM exo_scopes WHERE run_id IN ({inlist})"),
            ("delete exo_store", f"DELETE FROM exo_store WHERE run_id IN ({inlist})"),
            ("delete exo_runs", f"DELETE FROM exo_runs WHERE id IN ({inlist})"),
        ):
            lines = [r[0] for r in ledger.conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").fetchall()]
            plans[name] = "\n".join(line for line in lines if "'" not in line or len(line) < 200)
            log(f"  EXPLAIN {name} ({len(ids)} runs of {per_run} rows): {lines[-1].strip()}")
    res.figures["explain"] = {"shape": shape, "runs": len(ids), "rows_per_run": per_run, "plans": plans}


# -- the table ------------------------------------------------------------------
def table(res: Results, cfg: Config) -> str:
    rows: list[tuple[str, str, str, str]] = []
    f = res.figures
    fans = [w for w in cfg.widths if f"fan{w}" in f]
    if fans:
        small, mid, big = f.get("fan1000"), f.get("fan5000"), f[f"fan{max(fans)}"]
        for w in fans:
            x = f[f"fan{w}"]
            rows.append((f"fan-out {w:,} + unite: time (s); per executed state (ms)",
                         f"{x['seconds']:.1f}; {x['per_state_ms']:.2f}", "", ""))  # fmt: skip
        if mid is not None and max(fans) > 5000:
            r = big["per_state_ms"] / mid["per_state_ms"]
            rows.append((f"time per state, {max(fans):,} against 5,000", f"{r:.2f}x", "<= 1.3x",
                         "PASS" if r <= 1.3 else "FAIL"))  # fmt: skip
        for w in fans:
            x = f[f"fan{w}"]
            rows.append((f"peak RSS during fan-out {w:,}: worker (main + children); driver (MB)",
                         f"{x['worker_peak_rss_mb']:.1f}; {x['driver_peak_rss_mb']:.1f}", "", ""))  # fmt: skip
        if small is not None and max(fans) > 1000:
            r = big["worker_peak_rss_mb"] / small["worker_peak_rss_mb"]
            rows.append((f"worker peak RSS, {max(fans):,} against 1,000", f"{r:.2f}x", "<= 1.2x",
                         "PASS" if r <= 1.2 else "FAIL"))  # fmt: skip
            r = big["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
            rows.append((f"driver peak RSS, {max(fans):,} against 1,000", f"{r:.2f}x", "bounded", ""))
    d = f.get("disk")
    if d:
        n = d["state_rows"]
        for when, label in (("as_left", "as the runs left it"), ("vacuum_full", "after VACUUM FULL")):
            sz = d[when]
            for t in LEDGER_TABLES:
                heap, idx, total = sz.get(t, (0, 0, 0))
                rows.append((f"disk per state row, {t}, {label}: table; indexes; total (B)",
                             f"{heap / n:.0f}; {idx / n:.0f}; {total / n:.0f}", "", ""))  # fmt: skip
            heap, idx, total = (sum(v[i] for v in sz.values()) for i in range(3))
            rows.append((f"disk per state row, all four, {label} ({n:,} rows, {d['executed_states']:,} executed)",
                         f"{heap / n:.0f}; {idx / n:.0f}; {total / n:.0f}", "reported", ""))  # fmt: skip
    for shape, p in f.get("purge", {}).items():
        rows.append((f"purge, {shape}: {p['runs']:,} runs of {p['state_rows_per_run']} state rows "
                     f"({p['state_rows']:,} rows): time (s)", f"{p['seconds_from_first_delete']:.1f}",
                     f"{p['beat_purge_ticks']} beat ticks", ""))  # fmt: skip
        rows.append((f"purge, {shape}: longest beat purge round; longest purge transaction (s)",
                     f"{p.get('longest_tick_s', 0):.2f}; {p.get('longest_transaction_s', 0):.2f}",
                     "PURGE_BUDGET 2.0 s", ""))  # fmt: skip
    for phase, s in f.get("stream", {}).items():
        for what, label in (("claim", "claim latency"), ("trigger", "trigger call"), ("run", "trigger to finished_at")):
            if what in s:
                x = s[what]
                rows.append((f"stream {cfg.rate:g}/s, {phase}: {label} p50; p99; max (ms)",
                             f"{x['p50_ms']:.1f}; {x['p99_ms']:.1f}; {x['max_ms']:.1f}",
                             f"{s['runs']} runs" + (f", {s['unfinished']} unfinished" if s["unfinished"] else ""),
                             ""))  # fmt: skip
    head = ("case", "value", "target / note", "")
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fan-out of 20,000 instead of 100,000")
    parser.add_argument("--tiny", action="store_true", help="small sizes: a smoke test (figures not comparable)")
    parser.add_argument("--widths", default="", help="fan-out widths, e.g. 1000,5000,100000")
    parser.add_argument("--only", default="", help="phases to run: fan,disk,purge (default all)")
    parser.add_argument(
        "--shapes", default="", help="purge shapes: small (runs of 10 rows), wide (1,000), wider (10,000; not default)"
    )
    parser.add_argument("--purge-states", type=int, default=0, help="state rows to purge per shape (1,000,000)")
    parser.add_argument("--window", type=float, default=0.0, help="seconds of stream before/after a purge (40)")
    parser.add_argument("--no-explain", action="store_true", help="skip EXPLAIN of one purge batch after the purges")
    parser.add_argument("--loglevel", default="INFO", help="the worker's log level")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs folder (printed at the end)")
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg.widths = (1000, 5000, 20_000)
    if args.tiny:
        cfg.widths, cfg.purge_states, cfg.window, cfg.shapes = (100, 500, 2000), 20_000, 10.0, (("small", 4),
                                                                                                 ("wide", 49))
    if args.widths:
        cfg.widths = tuple(int(w) for w in args.widths.split(","))
    if args.only:
        cfg.phases = tuple(p.strip() for p in args.only.split(","))
    if args.purge_states:
        cfg.purge_states = args.purge_states
    if args.window:
        cfg.window = args.window
    if args.no_explain:
        cfg.explain = False
    if args.shapes:
        cfg.shapes = tuple((s, dict(cfg.shapes).get(s, SHAPES[s])) for s in args.shapes.split(","))

    started = time.monotonic()
    res = Results()
    lock = RunLock()
    root = Path(tempfile.mkdtemp(prefix="exo-scale-"))
    flush_redis()
    database_url = create_database()
    log(f"database {database_url.rsplit('/', 1)[1]}, broker {REDIS_URL}, logs in {root}, load {loadavg()}")
    # A fan of 100,000 returns about 1.9 MB of outputs, over the default EXO_MAX_OUTPUT_BYTES (1 MiB).
    bench = Bench(root / "pg", database_url, REDIS_URL, args.loglevel, extra_env={"EXO_MAX_OUTPUT_BYTES": str(2**26)})
    ledger = Ledger(database_url, bench.home)
    load0 = loadavg()
    try:
        worker = bench.start_exo_worker("exo")
        ledger.watch = [worker]
        exo = Exo(bench.manager(), ledger, set())
        if "fan" in cfg.phases:
            fan_outs(exo, worker, cfg, res)
        if "disk" in cfg.phases:
            disk(ledger, res)
        if "purge" in cfg.phases:
            purge(bench, exo, ledger, cfg, res)
    finally:
        tear_down(bench, ledger, database_url, lock)
    from .run import _commit

    elapsed = time.monotonic() - started
    res.figures["info"] = {"elapsed_s": round(elapsed), "loadavg": f"{load0} -> {loadavg()}", "commit": _commit()}
    print(
        f"\nexo_celery scale cases (issue 15), one exo worker (-c 2 -P prefork), {elapsed:.0f} s, commit "
        f"{_commit()}, load average (1/5/15 min) {load0} at the start, {loadavg()} at the end, {os.cpu_count()} CPUs\n"
    )
    print(table(res, cfg))
    if args.json:
        args.json.write_text(json.dumps(res.figures, indent=2, default=str))
    if args.keep:
        print(f"\nlogs: {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
