"""Profile where a worker's time goes: `python -m bench.profile fan1000 chain200 indep [--side plain]`.

Starts a worker on a fresh database (PostgreSQL + Redis db 11, like bench.run),
records it with py-spy (`--subprocesses --idle`, so waits on the database and
the broker show up as well as CPU) while the case runs, and prints the share of
the pool children's samples spent in each function (inclusive) and in a few
buckets (SQL round trips, SQLAlchemy, JSON, publishing, logging, ...).
`--client` profiles the driver's `trigger` calls with pyinstrument instead.
Needs `pip install py-spy pyinstrument`.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .cases import Exo, Plain, fan_graph, one_graph
from .harness import REDIS_URL, Bench, Ledger, RunLock, create_database, flush_redis, tear_down

# Resource buckets: the innermost frame matching a pattern decides ("function (file:line)").
RESOURCES: list[tuple[str, str]] = [
    ("PostgreSQL round trip (waiting)", r"^Connection\.wait \(psycopg/|psycopg/waiting\.py|^wait_c |select\.|^poll "),
    ("psycopg client", r"psycopg"),
    ("SQLAlchemy (compile, execute, rows)", r"sqlalchemy"),
    ("SQLite", r"sqlite3"),
    ("JSON", r"\(json/"),
    ("pydantic", r"pydantic"),
    ("logging", r"\(logging/"),
    ("redis-py", r"\(redis/"),
    ("kombu", r"\(kombu/"),
    ("celery / billiard", r"\(celery/|\(billiard/"),
    ("exo_celery", r"\(exo_celery/"),
]
# Phases of a pool child's time: the first pattern (in this order) matching any frame decides.
PHASES: list[tuple[str, str]] = [
    ("claim (UPDATE ... RETURNING, run start)", r"^Transitions\.claim "),
    ("complete (plan + write children, scopes, run)", r"^Transitions\.complete "),
    ("publish children (kombu send_task)", r"^publish \(exo_celery/celery_app"),
    ("run the node (inputs, execute, outputs)", r"^run_node "),
    ("load graph version", r"^Worker\.graph "),
    ("exo log lines", r"^_log_transition "),
    ("other exo_celery task code", r"^Worker\.run_state "),
    ("plain task body", r"\(bench/plain\.py"),
    ("Celery task tracing, result, events", r"^trace_task |^fast_trace_task |^_fast_trace_task "),
    ("idle: waiting for the next task", r"^Worker\.workloop "),
]


def _strip(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def _classify(frames: list[str], table: list[tuple[str, str]], innermost: bool) -> str | None:
    """Innermost: the deepest frame matching any pattern decides. Else the table's order is the priority."""
    if innermost:
        for frame in reversed(frames):
            for name, pattern in table:
                if re.search(pattern, frame):
                    return name
        return None
    for name, pattern in table:
        if any(re.search(pattern, frame) for frame in frames):
            return name
    return None


def summarise(raw: Path, top: int = 30) -> str:
    """Where the worker's main threads spend wall-clock time (other threads, e.g. idle heartbeats, left out)."""
    children: dict[str, list[tuple[list[str], int]]] = {}
    main: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames or not frames[0].startswith(("_run_module_as_main", "<module>")):
            continue  # another thread (heartbeat, counters: they start in Thread._bootstrap) or a partial stack
        if len(procs) > 1:
            children.setdefault(procs[-1].split(":")[0], []).append((frames, int(count)))
        else:
            main.append((frames, int(count)))
    out: list[str] = []
    samples = [s for stacks in children.values() for s in stacks]
    total = sum(c for _, c in samples)
    if not total:
        return "no pool-child samples"
    phases: dict[str, Counter[str]] = {}
    inclusive: Counter[str] = Counter()
    for frames, count in samples:
        phase = _classify(frames, PHASES, innermost=False) or "other"
        resource = _classify(frames, RESOURCES, innermost=True) or "interpreter / stdlib"
        if phase.startswith("idle"):
            resource = "-"
        phases.setdefault(phase, Counter())[resource] += count
        for name in {_strip(f) for f in frames}:
            inclusive[name] += count
    out.append(f"pool children: {len(children)}, {total} samples of their main threads (wall clock)")
    busy = total - sum(phases.get("idle: waiting for the next task", Counter()).values())
    out.append(f"busy {100 * busy / total:.1f}% of the time\n")
    out.append("phase (share of all child samples), then its resources:")
    for phase, counter in sorted(phases.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counter.values())
        out.append(f"  {100 * n / total:5.1f}%  {phase}")
        for resource, k in counter.most_common(5):
            if resource != "-":
                out.append(f"           {100 * k / total:5.1f}%  {resource}")
    resources: Counter[str] = Counter()
    for phase, counter in phases.items():
        if not phase.startswith("idle"):
            resources.update(counter)
    out.append("\nbusy time by resource (share of all child samples):")
    for resource, k in resources.most_common():
        out.append(f"  {100 * k / total:5.1f}%  {resource}")
    out.append(f"\ntop {top} functions in the children, inclusive (share of all child samples):")
    boring = re.compile(
        r"^(_run_module_as_main|_run_code|<module>|main|Typer|Command|TyperGroup|_main|Context|"
        r"get_callback|worker |Runtime\.start|Celery\.|WorkController|StartStopStep|Blueprint|"
        r"handle_preload|pass_context|TaskPool|Popen|ForkProcess|BaseProcess|AsynPool|"
        r"BasePool|Pool\._create|Pool\.__init__|Worker\.(workloop|__call__|_do_exit)|"
        r"process_initializer|Group\.invoke)"
    )
    shown = 0
    for name, k in inclusive.most_common():
        if boring.search(name):
            continue
        out.append(f"  {100 * k / total:5.1f}%  {name}")
        shown += 1
        if shown >= top:
            break
    main_total = sum(c for _, c in main)
    if main_total:
        mres: Counter[str] = Counter()
        for frames, count in main:
            leaf = frames[-1]
            if re.search(r"poll|epoll|select", leaf) and "kombu/utils/eventio" in leaf:
                mres["idle (event loop poll)"] += count
            else:
                mres[_classify(frames, RESOURCES, innermost=True) or "interpreter / stdlib"] += count
        out.append(f"\nworker main process (consumer, pool feeding, acks, events): {main_total} samples")
        for resource, k in mres.most_common(8):
            out.append(f"  {100 * k / main_total:5.1f}%  {resource}")
    return "\n".join(out)


def cpu_snapshot(worker_pid: int, database: str = "") -> dict[str, float]:
    """CPU seconds (user + system) so far of the worker's main process, its children, the PostgreSQL backends
    serving `database`, Redis (shared with anyone else using it), this driver, and everything else."""
    import os

    import psutil

    out: Counter[str] = Counter()
    worker = psutil.Process(worker_pid)
    kids = {c.pid for c in worker.children(recursive=True)}
    for p in psutil.process_iter(["pid", "name", "cpu_times", "cmdline"]):
        t = p.info["cpu_times"]
        if t is None:
            continue
        used = t.user + t.system
        name = p.info["name"] or ""
        if p.info["pid"] == worker_pid:
            out["worker main process"] += used
        elif p.info["pid"] in kids:
            out["worker pool children"] += used
        elif p.info["pid"] == os.getpid():
            out["driver (trigger, polling)"] += used
        elif name.startswith("postgres") and database and database in " ".join(p.info["cmdline"] or []):
            out["postgresql backends of the bench database"] += used
        elif name.startswith("redis"):
            out["redis-server (shared)"] += used
        else:
            out["other processes (incl. other databases)"] += used
    machine = psutil.cpu_times()
    out["machine busy"] = machine.user + machine.system + machine.nice + machine.irq + machine.softirq
    out["machine idle"] = machine.idle + machine.iowait
    return dict(out)


def cpu_report(before: dict[str, float], after: dict[str, float], elapsed: float, states: int | None) -> str:
    cores = __import__("os").cpu_count() or 1
    lines = [f"CPU over {elapsed:.1f} s on {cores} cores ({cores * elapsed:.1f} core-seconds):"]
    for key in after:
        used = after[key] - before.get(key, 0.0)
        if key.startswith("machine"):
            continue
        per = f", {used / states * 1000:.2f} ms per executed state" if states else ""
        lines.append(f"  {used:7.2f} s  {100 * used / (cores * elapsed):5.1f}% of the machine  {key}{per}")
    busy = after["machine busy"] - before["machine busy"]
    idle = after["machine idle"] - before["machine idle"]
    lines.append(f"  machine busy {100 * busy / max(busy + idle, 1e-9):.1f}%")
    return "\n".join(lines)


def run_case(case: str, exo: Exo | None, plain: Plain | None) -> None:
    kind, number = re.match(r"([a-z]+)(\d*)", case).groups()  # type: ignore[union-attr]
    n = int(number or 0)
    if exo is not None:
        if kind == "fan":
            print(f"  {case}: {exo.fan_out(n):.2f} s")
        elif kind == "chain":
            print(f"  {case}: {exo.chain(n) * 1000:.2f} ms per hop")
        elif kind == "indep":
            print(f"  {case}: {exo.independent(n or 2000)}")
    elif plain is not None:
        if kind == "fan":
            print(f"  {case}: {plain.chord(n):.2f} s")
        elif kind == "chain":
            print(f"  {case}: {plain.chain(n) * 1000:.2f} ms per hop")
        elif kind == "indep":
            print(f"  {case}: {plain.independent(n or 2000)}")


def executed_states(case: str) -> int | None:
    kind, number = re.match(r"([a-z]+)(\d*)", case).groups()  # type: ignore[union-attr]
    n = int(number or 0)
    return {"fan": n + 2, "chain": n, "indep": n or 2000}.get(kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+", help="fan<N>, chain<N>, indep<N> (each profiled separately)")
    parser.add_argument("--side", choices=["exo", "plain"], default="exo")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--no-spy", action="store_true", help="CPU accounting only, no py-spy")
    parser.add_argument("--no-idle", action="store_true", help="CPU only (py-spy without --idle)")
    parser.add_argument("--client", action="store_true", help="profile the client's trigger calls (pyinstrument)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--out", type=Path, default=None, help="folder for raw profiles (default: a temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="exo-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock()
    flush_redis()
    database_url = create_database()
    bench = Bench(out / "home", database_url, REDIS_URL, args.loglevel)
    ledger = Ledger(database_url, bench.home)
    try:
        proc = bench.start_exo_worker() if args.side == "exo" else bench.start_plain_worker()
        exo = Exo(bench.manager(), ledger, set()) if args.side == "exo" else None
        plain = Plain() if args.side == "plain" else None
        if exo is not None:
            exo.fan_out(10)
            exo.chain(5)
            for case in args.cases:
                kind, number = re.match(r"([a-z]+)(\d*)", case).groups()  # type: ignore[union-attr]
                if kind == "fan":
                    exo.ensure(f"fan{number}", fan_graph(int(number)))
        if args.client and exo is not None:
            from pyinstrument import Profiler

            name = "oneclient"
            exo.ensure(name, one_graph())
            profiler = Profiler(interval=0.0005)
            profiler.start()
            t0 = time.time()
            for _ in range(300):
                exo.manager.trigger_sync(name)
            elapsed = time.time() - t0
            profiler.stop()
            print(f"300 trigger_sync calls: {elapsed:.2f} s ({elapsed / 300 * 1000:.2f} ms each)")
            print(profiler.output_text(unicode=False, color=False, show_all=False))
            return 0
        for case in args.cases:
            raw = out / f"{args.side}-{case}.txt"
            spy = None
            if not args.no_spy:
                cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proc.popen.pid)]
                cmd += ["--subprocesses", "--format", "raw", "--rate", str(args.rate), "--output", str(raw)]
                if not args.no_idle:
                    cmd.append("--idle")
                spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)
            print(f"{args.side} {case}:")
            dbname = database_url.rsplit("/", 1)[1]
            before, t0 = cpu_snapshot(proc.popen.pid, dbname), time.monotonic()
            run_case(case, exo, plain)
            after, elapsed = cpu_snapshot(proc.popen.pid, dbname), time.monotonic() - t0
            print(cpu_report(before, after, elapsed, executed_states(case)))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
                print(summarise(raw))
                print(f"(raw stacks: {raw})")
            print()
    finally:
        tear_down(bench, ledger, database_url, lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
