"""Tools of the fault suite: a private Redis, ledger checks, broker taps, secret scans and figures."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from exo_celery import GraphNodeModel, UnitesModel

from ..support import ROOT, Proc, Stack, run, uid

FAULT_NODES = "tests.faults.nodes:NODES"
# EXO_SOAK=N multiplies the repetitions of every scenario by N (CI runs with it unset: the fast mode).
SOAK = max(1, int(os.environ.get("EXO_SOAK", "1") or 1))
SECRET = f"S3cr3t-{uuid.uuid4().hex}"  # distinctive: found only if it leaked
FAST = {"EXO_LEASE_SECONDS": "3", "EXO_SWEEP_INTERVAL": "1"}


def soak(n: int) -> int:
    """`n` in CI, `n * EXO_SOAK` in soak mode."""
    return n * SOAK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, pause: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached after {timeout} s")
        time.sleep(pause)


# -- a private Redis ------------------------------------------------------------
class PrivateRedis:
    """A redis-server of our own (never the shared one on 6379): no persistence, so a kill loses every message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=10)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.folder), "--daemonize", "no"]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._pong, 10, f"redis-server on port {self.port}", 0.02)

    def _pong(self) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: every message it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()


class RedisTap:
    """Everything sent to a Redis server (MONITOR): the messages, the events, whatever was consumed since."""

    def __init__(self, r: PrivateRedis) -> None:
        self.r = r
        self.chunks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.r.client().monitor() as m:
                    for item in m.listen():
                        self.chunks.append(item.get("command", ""))
                        if self._stop.is_set():
                            return
            except Exception:  # the server was killed on purpose: reattach once it is back
                time.sleep(0.05)

    def text(self) -> str:
        self._stop.set()
        try:  # one command wakes the monitor loop so the thread ends
            self.r.client().ping()
        except redis.RedisError:
            pass
        self._thread.join(timeout=2)
        return "\n".join(self.chunks)


# -- the ledger, read directly ----------------------------------------------------
class Ledger:
    """Plain SQL on a private ledger database, to check what the library wrote."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(50):  # the database scenario terminates our connections too
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                return self._conn.execute(sql, tuple(params)).fetchall()
            except psycopg.OperationalError:
                self.close()
                if attempt == 49:
                    raise
                time.sleep(0.2)
        return []

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None

    def table_counts(self) -> dict[str, int]:
        tables = ("exo_graphs", "exo_runs", "exo_states", "exo_scopes", "exo_store")
        counts = self.rows("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables))[0]
        return dict(zip(tables, (int(c) for c in counts), strict=True))

    def run_status(self, run_id: str) -> str | None:
        return self.value("SELECT status FROM exo_runs WHERE id = %s", (run_id,))

    def wait_runs(self, run_ids: list[str], timeout: float) -> dict[str, str]:
        """Statuses once every run is terminal."""
        terminal = {"SUCCESS", "FAILED", "CANCELLED"}

        def done() -> dict[str, str] | None:
            found = dict(self.rows("SELECT id, status FROM exo_runs WHERE id = ANY(%s)", (run_ids,)))
            return found if all(found.get(r) in terminal for r in run_ids) else None

        try:
            return wait_until(done, timeout, f"{len(run_ids)} run(s) terminal", 0.2)
        except TimeoutError:
            stuck = self.rows(
                "SELECT run_id, identifier, status, lease_until, attempts FROM exo_states "
                "WHERE run_id = ANY(%s) AND status IN ('QUEUED', 'CREATED') LIMIT 20",
                (run_ids,),
            )
            raise TimeoutError(f"runs not terminal after {timeout} s; some waiting states: {stuck}") from None


class RecoveryClock:
    """For each fault: how long until every state that was waiting or running at that moment was terminal."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.snapshots = Ledger(url)
        self.pending: list[tuple[float, list[str]]] = []
        self.times: list[float] = []
        self.recovered: list[tuple[float, float]] = []  # (fault, recovered) on time.monotonic(), in fault order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def fault(self, run_ids: list[str]) -> int:
        """Call at the moment of a fault; returns how many states were in flight."""
        ids = [r[0] for r in self.snapshots.rows(_IN_FLIGHT, (run_ids,))]
        with self._lock:
            self.pending.append((time.monotonic(), ids))
        return len(ids)

    def _run(self) -> None:
        ledger = Ledger(self.url)
        while not self._stop.is_set():
            with self._lock:
                pending = list(self.pending)
            for item in pending:
                at, ids = item
                left = ledger.value(
                    "SELECT count(*) FROM exo_states WHERE id = ANY(%s) AND status IN ('QUEUED', 'CREATED')", (ids,)
                )
                if not left:
                    done = time.monotonic()
                    with self._lock:
                        self.pending.remove(item)
                        self.times.append(done - at)
                        self.recovered = sorted([*self.recovered, (at, done)])
            time.sleep(0.1)
        ledger.close()

    def stop(self, timeout: float = 60) -> list[float]:
        """Wait until every fault recovered (or `timeout`), then return the recovery times."""
        wait_until(lambda: not self.pending, timeout, "recovery of every fault", 0.1)
        self._stop.set()
        self._thread.join(timeout=5)
        self.snapshots.close()
        return self.times


_IN_FLIGHT = "SELECT id FROM exo_states WHERE run_id = ANY(%s) AND status IN ('QUEUED', 'CREATED')"


def summary(values: list[float]) -> dict[str, float]:
    """max / mean / p50 of a list of seconds, rounded."""
    if not values:
        return {"max": 0.0, "mean": 0.0, "p50": 0.0}
    ordered = sorted(values)
    return {
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": round(ordered[len(ordered) // 2], 2),
    }


def fan_graph(n: int, path: str, ms: int = 0) -> list[GraphNodeModel]:
    """fan (FanOut n) -> work (Work, one per item) -> gather (Gather, unites fan)."""
    return [
        GraphNodeModel(node_name="FanOut", identifier="fan", inputs={"n": str(n)}, next_nodes=["work"]),
        GraphNodeModel(
            node_name="Work",
            identifier="work",
            inputs={"item": "${{ fan.outputs.item }}", "path": path, "ms": str(ms)},
            next_nodes=["gather"],
        ),
        GraphNodeModel(
            node_name="Gather",
            identifier="gather",
            inputs={"values": "${{ work.outputs.item }}"},
            unites=UnitesModel(identifier="fan"),
        ),
    ]


@dataclass
class FanCheck:
    """What one run of `fan_graph` left in the ledger, against what it should have left."""

    run_id: str
    status: str
    lost: int  # items with no SUCCESS work state, plus missing gathered values
    duplicated: int  # extra SUCCESS work states, extra fan outputs, extra unite states
    unites: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS" and not (self.lost or self.duplicated or self.problems) and self.unites == 1


def check_fan_run(ledger: Ledger, run_id: str, n: int) -> FanCheck:
    """Exactly-once in the ledger: n fan outputs, n SUCCESS work states (one per branch), one unite of n values."""
    problems: list[str] = []
    rows = ledger.rows("SELECT identifier, status, branch, outputs::text FROM exo_states WHERE run_id = %s", (run_id,))
    by: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for ident, status, branch, outputs in rows:
        by.setdefault((ident, status), []).append((branch, outputs))
    other = sorted({(i, s) for i, s in by if s != "SUCCESS"})
    if other:
        problems.append(f"states not SUCCESS: {[(i, s, len(by[(i, s)])) for i, s in other]}")
    fan_branches = [b for b, _ in by.get(("fan", "SUCCESS"), [])]
    work = by.get(("work", "SUCCESS"), [])
    work_branches = Counter(b for b, _ in work)
    items = Counter(json.loads(o)["item"] for _, o in work)
    expected = {f"i{k:04d}" for k in range(n)}
    lost = len(expected - set(items))
    gathers = by.get(("gather", "SUCCESS"), [])
    # Extra states in the ledger: more than one SUCCESS work state for an item or a branch, extra fan
    # outputs, more than one unite state.
    duplicated = max(sum(c - 1 for c in items.values()), sum(c - 1 for c in work_branches.values()))
    duplicated += max(0, len(fan_branches) - n) + max(0, len(gathers) - 1)
    if len(gathers) == 1:
        values = json.loads(json.loads(gathers[0][1])["values"])
        if values != sorted(expected):
            problems.append(f"gathered {len(values)} values, not the {n} items in fan-out order")
            lost += len(expected - set(values))
    if len(fan_branches) != n or len(set(fan_branches)) != n:
        problems.append(f"{len(fan_branches)} fan outputs ({len(set(fan_branches))} distinct branches), expected {n}")
    if len(work_branches) != n:
        problems.append(f"{len(work_branches)} distinct work branches, expected {n}")
    scopes = ledger.rows("SELECT id, outstanding FROM exo_scopes WHERE run_id = %s AND outstanding <> 0", (run_id,))
    if scopes:
        problems.append(f"scopes not emptied: {scopes}")
    outstanding = ledger.value("SELECT outstanding FROM exo_runs WHERE id = %s", (run_id,))
    if outstanding != 0:
        problems.append(f"run counter outstanding={outstanding}")
    status = ledger.run_status(run_id) or "MISSING"
    return FanCheck(run_id, status, lost, duplicated, len(gathers), problems)


def effect_lines(path: Path) -> Counter[str]:
    """How many times each item's effect was written (one line per execution)."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def deliveries(procs: Iterable[Proc]) -> tuple[int, int]:
    """(task messages received, states claimed) over these workers' logs."""
    received = claimed = 0
    for p in procs:
        text = p.text()
        received += text.count("] received")
        claimed += text.count(" status=RUNNING")
    return received, claimed


# How Celery logs the end of a task it received: a result, a retry, an exception, or an ignored task.
_TASK_ENDED = re.compile(r"\] (succeeded in |retry: |raised |ignored)")


def all_handled(procs: Iterable[Proc]) -> bool:
    """True when each of these workers logged an end for every task message it logged as received."""
    return all(p.text().count("] received") <= len(_TASK_ENDED.findall(p.text())) for p in procs)


def beat_resent(procs: Iterable[Proc]) -> tuple[int, int]:
    """(due states released, lost or orphaned states re-sent) over these beat processes' logs."""
    released = resent = 0
    for p in procs:
        for m in re.finditer(r"released (\d+) due state\(s\), re-sent (\d+) lost", p.text()):
            released += int(m.group(1))
            resent += int(m.group(2))
    return released, resent


# -- secrets ------------------------------------------------------------------------
_B64 = re.compile(r"[A-Za-z0-9+/=_-]{16,}")


def expand(text: str) -> str:
    """`text` plus every base64 run in it decoded (kombu puts message bodies in base64)."""
    parts = [text]
    for token in set(_B64.findall(text)):
        if _HEX.fullmatch(token):
            continue  # ids, not base64
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                parts.append(decode(token + "=" * (-len(token) % 4)).decode("utf-8", "replace"))
                break
            except (binascii.Error, ValueError):
                continue
    return "\n".join(parts)


_HEX = re.compile(r"[0-9a-fA-F-]+")


def redis_dump(client: redis.Redis) -> str:
    """Every key of one Redis database with its value, whatever its type."""
    out: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            values: list[Any] = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        else:
            values = []
        out.append(key.decode(errors="replace"))
        out.extend(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values if v is not None)
    return "\n".join(out)


def ledger_dump(ledger: Ledger) -> str:
    """Every row of every exo_* table as text (all columns, JSON included)."""
    tables = [r[0] for r in ledger.rows("SELECT tablename FROM pg_tables WHERE tablename LIKE 'exo_%%'")]
    out: list[str] = []
    for t in tables:
        out.extend(r[0] for r in ledger.rows(f"SELECT t::text FROM {t} t"))
    return "\n".join(out)


def cli_output(stack: Stack, run_ids: list[str], namespace: str, full: bool = False) -> tuple[str, bool]:
    """What the CLI prints about these runs, with whatever read commands it has (`show`, `runs`).

    Returns the text and whether `show` was used (then the first run id must be in the text)."""
    global _CLI_HELP
    if _CLI_HELP is None:
        _CLI_HELP = _cli(stack, ["--help"])
    out = [_CLI_HELP]
    has = {c for c in ("show", "runs") if re.search(rf"^\s*[│ ]\s*{c}\s", _CLI_HELP, re.M)}
    global_options = "--namespace" in _CLI_HELP  # `exo-celery -n NS --json show RUN` (else per-command options)
    for run_id in run_ids[: 2 if full else 1] if "show" in has else []:
        if global_options:
            out.append(_cli(stack, ["--namespace", namespace, "--json", "show", run_id]))
        else:
            out.append(_cli(stack, ["show", run_id, "--json"]))
    if full and "runs" in has:
        out.append(_cli(stack, ["--namespace", namespace, "runs"] if global_options else ["runs"]))
    return "\n".join(out), "show" in has


_CLI_HELP: str | None = None


def _cli(stack: Stack, argv: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", *argv],
        cwd=ROOT,
        env={**stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


@dataclass
class SecretScan:
    """Where a secret was looked for, how much was read, and where it was found (must be nowhere)."""

    secret: str
    scanned: dict[str, int] = field(default_factory=dict)
    found: list[str] = field(default_factory=list)

    def look(self, place: str, text: str, control: str | None = None) -> None:
        """Search `text`; `control` is a value that must be there (proof the place was really read)."""
        self.scanned[place] = self.scanned.get(place, 0) + len(text)
        if control is not None:
            assert control in text, f"secret scan of {place}: control value {control!r} missing, scan is blind"
        full = expand(text)
        if self.secret in full:
            self.found.append(place)


def scan_secrets(
    stack: Stack,
    *,
    run_ids: list[str],
    namespace: str,
    redis_client: redis.Redis | None = None,
    tap_text: str | None = None,
    extra: dict[str, str] | None = None,
    full_cli: bool = False,
) -> SecretScan:
    """Scan the broker (its keys, and the tap of all traffic), the ledger, the logs and the CLI for SECRET."""
    scan = SecretScan(SECRET)
    control = run_ids[0] if run_ids else None
    if redis_client is not None:
        scan.look("redis keys", redis_dump(redis_client))
    if tap_text is not None:
        scan.look("broker traffic", tap_text, control)
    scan.look("ledger tables", ledger_dump(Ledger(stack.database_url or "")), control)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(stack.home.rglob("*.log")))
    scan.look("worker and beat logs", logs, control if logs else None)
    cli, showed = cli_output(stack, run_ids, namespace, full_cli)
    scan.look("cli output", cli, control if showed else None)
    for place, text in (extra or {}).items():
        scan.look(place, text)
    return scan


# -- figures ------------------------------------------------------------------------------
class Figures:
    """Figures of every scenario: printed as one line each, and written to JSON for RELIABILITY.md."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[dict[str, Any]] = []

    def record(self, scenario: str, **values: Any) -> None:
        item = {"scenario": scenario, "soak": SOAK, **values}
        self.items.append(item)
        print("FIGURES " + json.dumps(item, sort_keys=False))
        self.path.write_text(json.dumps(self.items, indent=2))
        extra = os.environ.get("EXO_FAULTS_FIGURES")
        if extra:
            Path(extra).write_text(json.dumps(self.items, indent=2))

    def lines(self) -> list[str]:
        return [json.dumps(i) for i in self.items]


def pool_children(proc: Proc) -> list[int]:
    """Pids of a prefork worker's pool processes (its process group, minus the main process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == proc.popen.pid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == proc.popen.pid and fields[0] not in {"Z", "X"}:  # fields[2] is the pgid
            found.append(int(entry.name))
    return found


def start_workers(stack: Stack, namespace: str, count: int, concurrency: int = 2, **kw: Any) -> list[Proc]:
    """Start `count` workers at once (their start-up overlaps), then wait until each is ready."""
    procs = [
        stack.start_worker(namespace, FAULT_NODES, concurrency=concurrency, wait=False, **kw) for _ in range(count)
    ]
    for p in procs:
        p.wait_for(" ready.")
    return procs


def register(stack: Stack, namespace: str) -> None:
    """Register the fault nodes' schemas, as a starting worker does (so graphs validate before it is up)."""
    from exo_celery.ledger.repo import Repo
    from exo_celery.node import node_schema

    from . import nodes

    schemas = {cls.__name__: node_schema(cls) for cls in nodes.NODES}
    Repo(stack.settings().ledger_url).register_nodes(namespace, schemas, "fault-suite")


def upsert(stack: Stack, namespace: str, name: str, nodes: list[GraphNodeModel], **kw: Any) -> dict[str, Any]:
    """Upsert a graph of fault nodes (registered first), with the suite's secret."""
    register(stack, namespace)
    return run(stack.manager(namespace).upsert_graph(name, nodes, secrets={"api_key": SECRET}, **kw))


@dataclass
class FanScenario:
    """A namespace serving `fan_graph` (store key `path` required), two workers of it and a beat."""

    namespace: str
    ledger: Ledger
    manager: Any
    workers: list[Proc]
    beat: Proc

    def work_done(self, run_id: str) -> int:
        """How many of the run's branches have ended SUCCESS."""
        sql = "SELECT count(*) FROM exo_states WHERE run_id = %s AND identifier = 'work' AND status = 'SUCCESS'"
        return int(self.ledger.value(sql, (run_id,)))


def fan_scenario(stack: Stack, prefix: str, width: int, ms: int) -> FanScenario:
    """Register the fault nodes in a new namespace, store `fan_graph(width)`, start two workers and a beat."""
    ns = uid(prefix)
    upsert(stack, ns, "fan", fan_graph(width, "${{ store.path }}", ms=ms), store_config={"required_keys": ["path"]})
    workers = start_workers(stack, ns, 2)
    return FanScenario(ns, Ledger(stack.database_url or ""), stack.manager(ns), workers, stack.start_beat())
