"""CPU seconds per process group, added up per process so that one that exits between two snapshots
counts for nothing rather than for minus its total (a closed PostgreSQL connection, say)."""

from __future__ import annotations

from collections import Counter

PARTS = (
    "worker main process",
    "worker pool children",
    "postgresql backends of the bench database",
    "redis-server (shared)",
)

Snapshot = dict[int, tuple[str, float]]


def snapshot(worker_pid: int, database: str, skip: frozenset[int] = frozenset()) -> Snapshot:
    """pid -> (part, CPU seconds so far) for the worker, its children, the bench database's backends
    (but those in `skip`: the driver's own polling connection) and redis-server."""
    import psutil

    out: Snapshot = {}
    try:
        kids = {c.pid for c in psutil.Process(worker_pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        kids = set()
    for p in psutil.process_iter(["pid", "name", "cpu_times", "cmdline"]):
        t, pid, name = p.info["cpu_times"], p.info["pid"], p.info["name"] or ""
        if t is None or pid in skip:
            continue
        if pid == worker_pid:
            part = PARTS[0]
        elif pid in kids:
            part = PARTS[1]
        elif name.startswith("postgres") and database and database in " ".join(p.info["cmdline"] or []):
            part = PARTS[2]
        elif name.startswith("redis"):
            part = PARTS[3]
        else:
            continue
        out[pid] = (part, t.user + t.system)
    return out


def used(before: Snapshot, after: Snapshot) -> Counter[str]:
    """CPU seconds per part between two snapshots (a process born in between counts from zero)."""
    total: Counter[str] = Counter()
    for pid, (part, seconds) in after.items():
        total[part] += seconds - before.get(pid, (part, 0.0))[1]
    return total
