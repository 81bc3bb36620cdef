"""Benchmark exo_celery against plain Celery (issue 5): `python -m bench.run [--quick]`.

One process tree, one run: a fresh PostgreSQL database (dropped at the end)
and Redis database 11 (flushed, and only that one) serve both sides; an
exo_celery worker and a plain Celery worker (prefork, -c 2 each) run side by
side and the cases alternate between them. Prints a table of medians and
ratios against the issue's targets; `--json PATH` also writes every sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import Exo, Plain, fan_graph
from .cpu import PARTS as CPU_PARTS
from .cpu import snapshot as cpu_snapshot
from .cpu import used as cpu_used
from .harness import (
    REDIS_URL,
    Bench,
    Ledger,
    Peak,
    Proc,
    RunLock,
    WorkerDied,
    create_database,
    flush_redis,
    log,
    markdown_table,
    tear_down,
)
from .sqlcount import read_totals
from .user import UserExo, UserPlain, start_plain_default_worker, wait_lags


@dataclass
class Config:
    reps: int
    fan_widths: tuple[int, ...] = (1000, 5000)
    chain_length: int = 200
    independent: int = 2000
    sql_widths: tuple[int, ...] = (10, 1000)
    rss_marks: tuple[int, int] = (1000, 20000)
    embedded_length: int = 100
    embedded_reps: int = 3
    user_fan: int = 2000  # the user's comparison (issue 15): trigger -> wait() vs plain defaults -> .get()
    user_chain: int = 200
    user_one: int = 50
    waiters: int = 100
    cases: tuple[str, ...] = ()  # only these side-by-side cases (all when empty)


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None

    def paired(self, key: str) -> float | None:
        """Median over repetitions of exo/plain, each pair measured back to back (robust to drifting load)."""
        exo, plain = self.samples.get(f"{key}.exo", []), self.samples.get(f"{key}.plain", [])
        pairs = [e / p for e, p in zip(exo, plain, strict=False) if p]
        return statistics.median(pairs) if pairs else None


# -- phases ---------------------------------------------------------------------
@dataclass
class Sides:
    """The workers and drivers of both comparisons."""

    exo: Exo
    plain: Plain
    user_exo: UserExo
    user_plain: UserPlain
    exo_proc: Proc
    plain_proc: Proc
    default_proc: Proc
    database: str


def compare(sides: Sides, cfg: Config, res: Results) -> None:
    """The side-by-side cases, alternating sides (and the order of sides on every other repetition).

    Matched cases (`fan*`, `hop`, `indep`, `backlog`): the plain worker shares exo_celery's Celery
    configuration, and exo is timed to the ledger's `finished_at`. The user's cases (`u*`): plain Celery
    with its defaults, timed to `.get()` returning, against exo timed to `wait()` returning.
    Around every case, CPU seconds of the side's worker processes, the bench database's PostgreSQL
    backends and Redis are noted (`cpu.<case>.<side>`, per executed state or task).
    Both matched workers' RSS is sampled all along; after every case the peak so far is noted with the
    number of states (tasks) the worker has executed, for the "RSS after 1,000 / 20,000 states" rows.
    """
    exo, plain, exo_proc, plain_proc = sides.exo, sides.plain, sides.exo_proc, sides.plain_proc
    ux, up, default_proc, database = sides.user_exo, sides.user_plain, sides.default_proc, sides.database
    polling = frozenset({exo.ledger.conn.info.backend_pid})  # the driver's reads of exo_runs: not the ledger's cost
    n = cfg.independent
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any], int]] = []
    for width in cfg.fan_widths:
        cases.append((f"fan{width}", lambda w=width: exo.fan_out(w), lambda w=width: plain.chord(w), width + 1))
    length = cfg.chain_length
    cases.append(("hop", lambda: exo.chain(length), lambda: plain.chain(length), length))
    cases.append(("indep", lambda: exo.independent(n), lambda: plain.independent(n), n))
    cases.append(
        ("backlog", lambda: exo.backlog(n, exo_proc.nodename), lambda: plain.backlog(n, plain_proc.nodename), n)
    )
    uw, ul, uo = cfg.user_fan, cfg.user_chain, cfg.user_one
    cases.append((f"ufan{uw}", lambda: ux.fan_out(uw), lambda: up.fan_out(uw), uw + 1))
    cases.append(("uhop", lambda: ux.chain(ul), lambda: up.chain(ul), ul))
    cases.append(("uone", lambda: ux.one(uo), lambda: up.one(uo), uo))
    # States (exo) and tasks (plain) each case executes, for CPU per state.
    executes = {f"fan{w}": (w + 2, w + 1) for w in cfg.fan_widths}
    executes.update({"hop": (length, length), "indep": (n, n), "backlog": (n, n), "uhop": (ul, ul), "uone": (uo, uo)})
    executes[f"ufan{uw}"] = (uw + 2, uw + 1)
    if cfg.cases:
        cases = [c for c in cases if c[0] in cfg.cases]
    trackers = {"exo": RssTracker(exo_proc), "plain": RssTracker(plain_proc)}
    plain_tasks = 0

    def executed() -> int:
        return int(
            exo.ledger.query("SELECT count(*) FROM exo_states WHERE execution_id IS NULL AND status <> 'QUEUED'")[0][0]
        )

    try:
        # Warm-up (not recorded): imports, first connections, compiled graphs, statement caches.
        exo.fan_out(10)
        plain.chord(10)
        exo.chain(5)
        plain.chain(5)
        ux.fan_out(10)
        up.fan_out(10)
        ux.chain(5)
        up.chain(5)
        plain_tasks += 11 + 5
        for rep in range(cfg.reps):
            for key, run_exo, run_plain, tasks in cases:
                sides = [("exo", run_exo), ("plain", run_plain)]
                if rep % 2:
                    sides.reverse()
                for side, fn in sides:
                    worker = (exo_proc if side == "exo" else sides_proc(key, plain_proc, default_proc)).popen.pid
                    before = cpu_snapshot(worker, database, polling)
                    value = fn()
                    cpu = cpu_used(before, cpu_snapshot(worker, database, polling))
                    count = executes[key][0 if side == "exo" else 1]
                    for part in CPU_PARTS:
                        res.add(f"cpu.{key}.{side}.{part}", cpu[part] / count)
                    if key in ("indep", "backlog"):
                        rate, sending = value
                        res.add(f"{key}.{side}", rate)
                        res.add(f"{key}_send.{side}", sending)
                        shown = f"{rate:.0f} runs/s, {sending:.2f} s to trigger/send {n}"
                    else:
                        res.add(f"{key}.{side}", value)
                        shown = f"{value * 1000:.2f} ms per hop" if key == "hop" else f"{value:.2f} s"
                    if key.startswith("u"):
                        shown = f"{value * 1000:.2f} ms per hop" if key == "uhop" else shown
                        shown = f"{value * 1000:.2f} ms per run" if key == "uone" else shown
                    if side == "exo":
                        trackers["exo"].checkpoint(executed())
                    elif not key.startswith("u"):
                        plain_tasks += tasks
                        trackers["plain"].checkpoint(plain_tasks)
                    log(f"rep {rep + 1}/{cfg.reps} {key:<7} {side:<5} {shown}")
                    time.sleep(0.3)
    finally:
        for side, tracker in trackers.items():
            tracker.close()
            res.info[f"rss.{side}"] = tracker.checkpoints
            for i, mark in enumerate(cfg.rss_marks):
                hit = tracker.at(mark)
                if hit is not None:
                    res.add(f"rss{i}.{side}", hit[1] / 2**20)
                    res.info[f"rss{i}.{side}.states"] = hit[0]
            log(
                f"{side} worker RSS (states, peak MB): "
                + ", ".join(f"{a}: {b / 2**20:.1f}" for a, b in tracker.checkpoints)
            )


def _stable_totals(folder: Path, settle: float = 0.5, timeout: float = 30.0) -> Counter[str]:
    """The summed counts once two reads `settle` seconds apart agree (the writers flush every 0.2 s)."""
    deadline = time.monotonic() + timeout
    last = read_totals(folder)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = read_totals(folder)
        if now == last:
            return now
        last = now
    return last


def sql_counts(bench: Bench, exo: Exo, cfg: Config, res: Results) -> None:
    """Statements the worker processes issue per state, at each fan-out width."""
    assert bench.sql_dir is not None
    exo.fan_out(10)  # warm-up: connections, graph cache
    for width in cfg.sql_widths:
        exo.ensure(f"fan{width}", fan_graph(width))
        before = _stable_totals(bench.sql_dir)
        _, run_id = exo.run_once(f"fan{width}", fan_graph(width))
        after = _stable_totals(bench.sql_dir)
        diff = after - before
        rows, executed = exo.ledger.query(
            "SELECT count(*), sum(CASE WHEN execution_id IS NULL THEN 1 ELSE 0 END) FROM exo_states WHERE run_id = ?",
            run_id,
        )[0]
        res.info[f"sql{width}"] = {"counts": dict(diff), "state_rows": int(rows), "executed_states": int(executed)}
        res.add(f"sql{width}.rows", diff["statements"] / rows)
        res.add(f"sql{width}.executed", diff["statements"] / executed)
        # psycopg sends BEGIN and COMMIT as round trips of their own; a pre-ping is one more.
        trips = diff["statements"] + 2 * diff["commits"] + diff["pings"]
        res.add(f"trips{width}.executed", trips / executed)
        log(
            f"width {width}: {diff['statements']} statements, {diff['commits']} commits, {diff['pings']} pings "
            f"for {rows} state rows / {executed} executed states: {dict(diff)}"
        )


def sides_proc(key: str, plain_proc: Proc, default_proc: Proc) -> Proc:
    """The plain worker a case runs on: the matched one, or the default-configuration one (`u*` cases)."""
    return default_proc if key.startswith("u") else plain_proc


def cpu_per_state(res: Results, key: str, side: str, parts: tuple[str, ...] = CPU_PARTS) -> float | None:
    """Median over repetitions of CPU seconds per executed state (task), summed over `parts`."""
    values = [res.samples.get(f"cpu.{key}.{side}.{p}") for p in parts]
    if any(v is None for v in values):
        return None
    return statistics.median(sum(rep) for rep in zip(*values, strict=True))  # type: ignore[arg-type]


def waiting(sides: Sides, cfg: Config, res: Results) -> None:
    """The pushed `wait`: `cfg.waiters` runs, each with its own waiter, all waiting at once in one loop."""
    lags = wait_lags(sides.exo.manager, sides.exo.ledger, cfg.waiters)
    lags.sort()
    res.samples["wait_lag"] = lags
    log(
        f"{len(lags)} concurrent waiters: wait returned {statistics.median(lags) * 1000:.1f} ms (median), "
        f"{lags[int(0.95 * (len(lags) - 1))] * 1000:.1f} ms (p95), {lags[-1] * 1000:.1f} ms (max) after finished_at"
    )


class RssTracker(Peak):
    """Samples a worker's RSS (main + pool children) every 0.1 s; checkpoints note the peak so far."""

    def __init__(self, proc: Proc) -> None:
        self.checkpoints: list[tuple[int, int]] = []  # (states executed so far, peak RSS so far in bytes)
        super().__init__(proc.rss)

    def checkpoint(self, states: int) -> None:
        self.peak = self.read()
        self.checkpoints.append((states, self.peak))

    def at(self, mark: int) -> tuple[int, int] | None:
        """The first checkpoint at or past `mark` states, else the last one (a short run never gets there)."""
        for states, peak in self.checkpoints:
            if states >= mark:
                return states, peak
        return self.checkpoints[-1] if self.checkpoints else None


def embedded(cfg: Config, res: Results, root: Path, loglevel: str) -> None:
    """The embedded default (SQLite ledger + filesystem broker under EXO_HOME): time per hop of a chain.

    A worker that dies is noted (`embedded.crashes`) and replaced, and the repetition is run again.
    """
    bench = Bench(root / "embedded", None, None, loglevel)
    ledger = Ledger(None, bench.home)
    crashes: list[str] = []
    try:
        ledger.watch = [bench.start_exo_worker("embedded")]
        exo = Exo(bench.manager(), ledger, set())
        exo.chain(5)  # warm-up
        done = 0
        while done < cfg.embedded_reps and len(crashes) < 3:
            try:
                value = exo.chain(cfg.embedded_length)
            except WorkerDied as exc:
                crashes.append(str(exc).splitlines()[0])
                last = [line for line in str(exc).splitlines() if "Error" in line][-1:]
                log(f"embedded worker died ({', '.join(last)}); starting another")
                bench.stop_all()
                ledger.watch = [bench.start_exo_worker("embedded")]
                continue
            done += 1
            res.add("embedded", value)
            log(f"rep {done}/{cfg.embedded_reps} embedded {value * 1000:.2f} ms per hop")
    finally:
        res.info["embedded.crashes"] = crashes
        ledger.close()
        bench.stop_all()


# -- the table ------------------------------------------------------------------
def table(res: Results, cfg: Config) -> str:
    m = res.median
    rows: list[tuple[str, ...]] = []

    def fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
        return "-" if value is None else format(value * scale, spec)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def verdict(value: float | None, ok: Callable[[float], bool]) -> str:
        return "" if value is None else ("PASS" if ok(value) else "FAIL")

    for width in cfg.fan_widths:
        e, p = m(f"fan{width}.exo"), m(f"fan{width}.plain")
        r = res.paired(f"fan{width}")
        last = width == max(cfg.fan_widths)
        rows.append(
            (f"fan-out {width:,} + unite vs chord of {width:,} (s)", fmt(e, ".2f"), fmt(p, ".2f"), fmt(r, ".2f") + "x",
             "<= 1.15x" if last else "", verdict(r, lambda v: v <= 1.15) if last else "")
        )  # fmt: skip
    e, p = m("hop.exo"), m("hop.plain")
    r = res.paired("hop")
    rows.append(
        (f"linear {cfg.chain_length}: time per hop (ms)", fmt(e, ".2f", 1000), fmt(p, ".2f", 1000), fmt(r, ".2f") + "x",
         "<= 1.5x", verdict(r, lambda v: v <= 1.5))
    )  # fmt: skip
    n = cfg.independent
    e, p = m("indep.exo"), m("indep.plain")
    r = res.paired("indep")
    rows.append(
        (f"{n:,} independent runs, trigger + run (runs/s)", fmt(e, ".0f"), fmt(p, ".0f"), fmt(r, ".2f") + "x",
         ">= 0.75x", verdict(r, lambda v: v >= 0.75))
    )  # fmt: skip
    e, p = m("backlog.exo"), m("backlog.plain")
    r = res.paired("backlog")
    rows.append(
        (f"{n:,} independent runs, worker drains a backlog (runs/s)", fmt(e, ".0f"), fmt(p, ".0f"),
         fmt(r, ".2f") + "x", ">= 0.85x", verdict(r, lambda v: v >= 0.85))
    )  # fmt: skip
    e, p = m("backlog_send.exo"), m("backlog_send.plain")
    r = ratio(e, p)
    rows.append(
        (f"  client: trigger / send {n:,} with no worker running (ms each)", fmt(e, ".2f", 1000 / n),
         fmt(p, ".2f", 1000 / n), fmt(r, ".1f") + "x", "", "")
    )  # fmt: skip
    rows.extend(user_rows(res, cfg))
    rows.extend(cpu_rows(res, cfg))
    per = {w: m(f"sql{w}.executed") for w in cfg.sql_widths}
    values = [v for v in per.values() if v is not None]
    same = len(values) == len(per) and max(values) - min(values) <= 1.0
    for w in cfg.sql_widths:
        rows.append(
            (f"SQL statements per executed state, fan-out {w:,}", fmt(per[w], ".2f"), "-", "", "same, <= 8",
             verdict(per[w], lambda v: same and v <= 8))
        )  # fmt: skip
    for w in cfg.sql_widths:
        rows.append((f"  per state row (outputs count as states), fan-out {w:,}", fmt(m(f"sql{w}.rows"), ".2f"),
                     "-", "", "", ""))  # fmt: skip
    for w in cfg.sql_widths:
        rows.append((f"  round trips per executed state, fan-out {w:,}", fmt(m(f"trips{w}.executed"), ".2f"),
                     "-", "", "", ""))  # fmt: skip
    a, b = m("rss0.exo"), m("rss1.exo")
    pa, pb = m("rss0.plain"), m("rss1.plain")
    n0 = res.info.get("rss0.exo.states", cfg.rss_marks[0])
    n1 = res.info.get("rss1.exo.states", cfg.rss_marks[1])
    p0 = res.info.get("rss0.plain.states")
    p1 = res.info.get("rss1.plain.states")
    rows.append(
        (f"peak worker RSS after {n0:,} states (plain: {p0 or 0:,} tasks) (MB)", fmt(a, ".1f"), fmt(pa, ".1f"), "",
         "", "")
    )  # fmt: skip
    growth = ratio(b, a)
    plain_growth = ratio(pb, pa)
    shown = "-" if growth is None else f"{growth - 1:+.1%}"
    if plain_growth is not None:
        shown += f" (plain {plain_growth - 1:+.1%})"
    short = n1 < cfg.rss_marks[1]
    rows.append(
        (f"peak worker RSS after {n1:,} states (plain: {p1 or 0:,} tasks) (MB)", fmt(b, ".1f"), fmt(pb, ".1f"), shown,
         "<= +10%" + (f" (at {cfg.rss_marks[1]:,})" if short else ""), verdict(growth, lambda v: v - 1 <= 0.10))
    )  # fmt: skip
    e = m("embedded")
    crashes = len(res.info.get("embedded.crashes", []))
    rows.append(
        (f"embedded default (SQLite + filesystem), linear {cfg.embedded_length}: per hop (ms)", fmt(e, ".2f", 1000),
         "-", f"worker crashed {crashes}x" if crashes else "", "<= 50 ms", verdict(e, lambda v: v <= 0.050))
    )  # fmt: skip
    head = ("case", "exo_celery", "plain Celery", "ratio", "target", "")
    return markdown_table(head, rows)


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    return "" if value is None else ("PASS" if ok(value) else "FAIL")


def user_rows(res: Results, cfg: Config) -> list[tuple[str, ...]]:
    """The user's comparison: exo trigger -> wait() returning; plain Celery defaults, apply_async -> .get()."""
    m, rows = res.median, []
    w, n, k = cfg.user_fan, cfg.user_chain, cfg.user_one
    for key, label, spec, scale, target, ok in (
        (f"ufan{w}", f"user: fan-out {w:,} + unite -> wait() vs chord of {w:,} -> .get(), defaults (s)", ".2f", 1,
         "<= 1.5x", lambda v: v <= 1.5),
        ("uhop", f"user: linear {n} -> wait() vs chain of {n} -> .get(), per hop (ms)", ".2f", 1000, "<= 2.0x",
         lambda v: v <= 2.0),
        ("uone", f"user: one-node run -> wait() vs delay().get(), {k} in turn (ms each)", ".2f", 1000, "", None),
    ):  # fmt: skip
        r = res.paired(key)
        rows.append((label, _fmt(m(f"{key}.exo"), spec, scale), _fmt(m(f"{key}.plain"), spec, scale),
                     _fmt(r, ".2f") + "x", target, _verdict(r, ok) if ok else ""))  # fmt: skip
    lags = res.samples.get("wait_lag")
    if lags:
        p95 = sorted(lags)[int(0.95 * (len(lags) - 1))]
        rows.append((f"wait() returns after finished_at, {len(lags)} concurrent waiters: median (ms)",
                     _fmt(statistics.median(lags), ".1f", 1000), "-", f"p95 {p95 * 1000:.1f} ms", "<= 20 ms",
                     _verdict(statistics.median(lags), lambda v: v <= 0.020)))  # fmt: skip
    return rows


def cpu_rows(res: Results, cfg: Config) -> list[tuple[str, ...]]:
    """CPU seconds per executed state (exo) and per task (plain): worker processes + PostgreSQL + Redis."""
    rows = []
    worker = CPU_PARTS[:2]
    fans = [(f"fan{w}", f"CPU per executed state, fan-out {w:,} (matched) (ms)", "<= 1.3x") for w in cfg.fan_widths]
    for key, label, target in (
        *fans,
        ("hop", f"CPU per executed state, linear {cfg.chain_length} (matched) (ms)", ""),
        ("indep", f"CPU per executed state, {cfg.independent:,} independent runs (matched) (ms)", ""),
        (f"ufan{cfg.user_fan}", f"CPU per executed state, user's fan-out {cfg.user_fan:,} (plain defaults) (ms)", ""),
        ("uhop", f"CPU per executed state, user's linear {cfg.user_chain} (plain defaults) (ms)", ""),
    ):
        e, p = cpu_per_state(res, key, "exo"), cpu_per_state(res, key, "plain")
        r = e / p if e is not None and p else None
        ok = (lambda v: v <= 1.3) if target else None
        rows.append((label + ": workers + PostgreSQL + Redis", _fmt(e, ".3f", 1000), _fmt(p, ".3f", 1000),
                     _fmt(r, ".2f") + "x", target, _verdict(r, ok) if ok else ""))  # fmt: skip
        e, p = cpu_per_state(res, key, "exo", worker), cpu_per_state(res, key, "plain", worker)
        r = e / p if e is not None and p else None
        rows.append(("  of which the worker's processes", _fmt(e, ".3f", 1000), _fmt(p, ".3f", 1000),
                     _fmt(r, ".2f") + "x", "", ""))  # fmt: skip
    return rows


class ForeignLoad:
    """CPU used by processes outside this benchmark (other users of the machine), sampled every 0.5 s."""

    def __init__(self) -> None:
        import os

        import psutil

        self.psutil = psutil
        self.me = os.getpid()
        self.seen: dict[int, float] = {}
        self.foreign = 0.0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ours(self) -> set[int]:
        try:
            me = self.psutil.Process(self.me)
            return {self.me, *(c.pid for c in me.children(recursive=True))}
        except self.psutil.NoSuchProcess:
            return {self.me}

    def _sample(self, first: bool = False) -> None:
        ours = self._ours()
        for p in self.psutil.process_iter(["pid", "name", "cpu_times"]):
            t = p.info["cpu_times"]
            name = p.info["name"] or ""
            if t is None or p.info["pid"] in ours or name.startswith(("postgres", "redis")):
                continue
            used = t.user + t.system
            before = self.seen.get(p.info["pid"], used if first else 0.0)
            self.foreign += max(0.0, used - before)
            self.seen[p.info["pid"]] = used

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def close(self) -> float:
        """Average share of the machine's CPUs used by foreign processes."""
        import os

        self._stop.set()
        self._thread.join()
        return self.foreign / ((os.cpu_count() or 1) * (time.monotonic() - self.started))


def _commit() -> str:
    """The commit of the exo_celery being measured (+dirty when its files differ), or "unknown"."""
    import os
    import subprocess

    import exo_celery

    where = Path(exo_celery.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "exo_celery"], cwd=where, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("BENCH_COMMIT", "unknown")  # e.g. a `git archive` copy
    return sha + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    import os
    from importlib.metadata import version

    import psycopg
    import redis

    from .harness import POSTGRES_ADMIN_URL

    out = {"python": platform.python_version(), "nproc": str(os.cpu_count())}
    for pkg in ("celery", "kombu", "SQLAlchemy", "psycopg", "redis", "exo_celery"):
        out[pkg] = version(pkg)
    with psycopg.connect(POSTGRES_ADMIN_URL) as conn:
        out["postgresql"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    out["redis-server"] = str(redis.Redis.from_url(REDIS_URL).info("server")["redis_version"])
    out["exo_celery commit"] = _commit()
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
        out["memory"] = f"{int(meminfo[1]) / 2**20:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, a shorter embedded phase")
    parser.add_argument("--tiny", action="store_true", help="small sizes: a smoke test of the run (with --quick)")
    parser.add_argument("--cases", default="", help="only these side-by-side cases, e.g. fan1000,hop,uhop")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of the side-by-side cases (default 3)")
    parser.add_argument("--loglevel", default="INFO", help="both workers' log level (default INFO, exo's default)")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: compare,wait,sql,embedded")
    parser.add_argument("--json", type=Path, default=None, help="also write every sample to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs folder (printed at the end)")
    parser.add_argument("--scale", action="store_true", help="then run bench.scale's cases (--quick passed on)")
    args = parser.parse_args(argv)
    cfg = Config(reps=args.reps or (1 if args.quick else 3))
    if args.quick:
        cfg.embedded_length, cfg.embedded_reps = 50, 1
    if args.tiny:  # a smoke test of the whole run, for development (figures not comparable)
        cfg.fan_widths, cfg.chain_length, cfg.independent, cfg.sql_widths = (100, 500), 50, 200, (10, 100)
        cfg.user_fan, cfg.user_chain, cfg.user_one, cfg.embedded_length, cfg.embedded_reps = 200, 50, 10, 20, 1
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cfg.cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())

    started = time.monotonic()
    res = Results()
    res.info["versions"] = versions()
    lock = RunLock()
    root = Path(tempfile.mkdtemp(prefix="exo-bench-"))
    flush_redis()
    database_url = create_database()
    log(f"database {database_url.rsplit('/', 1)[1]}, broker {REDIS_URL}, logs in {root}")
    bench = Bench(root / "pg", database_url, REDIS_URL, args.loglevel)
    ledger = Ledger(database_url, bench.home)
    load = ForeignLoad()
    try:
        exo_proc = bench.start_exo_worker("exo")
        plain_proc = bench.start_plain_worker()
        exo = Exo(bench.manager(), ledger, set())
        plain = Plain()
        default_proc = start_plain_default_worker(bench)
        ledger.watch, plain.watch = [exo_proc], [plain_proc]
        dbname = database_url.rsplit("/", 1)[1]
        user_exo, user_plain = UserExo(bench.manager(), set()), UserPlain()
        sides = Sides(exo, plain, user_exo, user_plain, exo_proc, plain_proc, default_proc, dbname)
        if "compare" not in skip:
            compare(sides, cfg, res)
        if "wait" not in skip:
            waiting(sides, cfg, res)
        bench.stop_all()
        if "sql" not in skip:
            bench.sql_dir = root / "sql"
            ledger.watch = [bench.start_exo_worker("sql")]
            sql_counts(bench, exo, cfg, res)
            bench.stop_all()
            bench.sql_dir = None
        if "embedded" not in skip:
            embedded(cfg, res, root, args.loglevel)
    finally:
        foreign = load.close()
        tear_down(bench, ledger, database_url, lock)
    elapsed = time.monotonic() - started
    res.info["elapsed_s"] = round(elapsed, 1)
    res.info["foreign_cpu_share"] = round(foreign, 3)
    res.info["config"] = cfg.__dict__
    v = res.info["versions"]
    print(
        f"\nexo_celery vs plain Celery: medians of {cfg.reps} repetition(s) (ratio: median of the per-repetition "
        f"ratios), prefork -c 2 each, "
        f"loglevel {args.loglevel}, {elapsed:.0f} s; other processes used {foreign:.0%} of the CPUs meanwhile\n"
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + "\n"
    )
    print(table(res, cfg))
    if args.json:
        args.json.write_text(json.dumps({"samples": res.samples, "info": res.info}, indent=2, default=str))
    if args.keep:
        print(f"\nlogs: {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if args.scale:  # after this run has released the lock: bench.scale takes it in turn
        from .scale import main as scale

        return scale(["--quick"] if args.quick else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
