"""A deployment across hosts: four network namespaces made by the test itself (tests/hosts.py).

- `db`: a private PostgreSQL cluster (initdb into its own /tmp) and a private Redis, listening on
  10.77.0.1 only;
- `w1`, `w2`: a prefork worker each (beat on w2), each with its own hostname, cwd and /tmp;
- `cli`: the client (tests/multi_host_client.py) that upserts, triggers and waits.

Every URL names 10.77.0.1 (no host has anything on its loopback), the secrets key comes only from
EXO_SECRETS_KEY, and nodes are imported from the installed checkout, not from a shared working
directory. A 200-branch fan-out + unite runs; host w1 dies mid-fan-out (SIGKILL to every process in
its namespace); the run still ends SUCCESS with one unite that ran once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .hosts import Hosts, HostsUnavailable, kept_under_tmp, python
from .support import CI, ROOT, SECRETS_KEY, Proc
from .timing import by_identifier, wait_until

WIDTH, SECONDS = 200, "0.05"
PARK_AFTER, CONCURRENCY = 15, 2  # w1 runs 15 branches, then parks one in each of its 2 pool processes
NODES = "tests.multi_host_nodes:NODES"
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def base_env() -> dict[str, str]:
    """What every host's processes get: no EXO_* or service URL of the test machine, no shared cwd."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        "PYTHONPATH": str(ROOT),  # the checkout stands for the package each host has installed
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Namespaces db, w1, w2, cli (unique per run); everything is torn down even on failure."""
    made = Hosts(["db", "w1", "w2", "cli"], tmp_path / "logs")
    try:
        made.create()
    except HostsUnavailable as exc:
        made.destroy()
        if CI:
            pytest.fail(f"cannot make network namespaces under CI=true: {exc}", pytrace=False)
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield made
    finally:
        made.destroy()


def start_db_host(hosts: Hosts) -> tuple[Proc, Proc]:
    """PostgreSQL (trust from the hosts' subnet) and Redis, both on the db host's address only."""
    if PG_BIN is None:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql", pytrace=False)
    ip = hosts.ip("db")
    subnet = ip.rsplit(".", 1)[0] + ".0/24"
    script = (
        f"{PG_BIN}/initdb -D /tmp/pg -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null"
        f" && echo 'host all all {subnet} trust' >> /tmp/pg/pg_hba.conf"
        f" && exec {PG_BIN}/postgres -D /tmp/pg -k /tmp -p 5432 -c listen_addresses={ip}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    postgres = hosts.spawn("db", "postgres", ["sh", "-c", script], base_env(), user="postgres")
    redis = hosts.spawn(
        "db",
        "redis",
        ["redis-server", "--bind", ip, "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
        base_env(),
    )
    postgres.wait_for("ready to accept connections", timeout=60)
    redis.wait_for("Ready to accept connections", timeout=30)
    return postgres, redis


def exo_env(hosts: Hosts) -> dict[str, str]:
    ip = hosts.ip("db")
    return {
        **base_env(),
        "EXO_DATABASE_URL": f"postgresql://postgres@{ip}:5432/postgres",
        "EXO_BROKER_URL": f"redis://{ip}:6379/0",
        "EXO_SECRETS_KEY": SECRETS_KEY,
        "EXO_LEASE_SECONDS": "3",
        "EXO_SWEEP_INTERVAL": "1",
    }


def worker_argv(name: str) -> list[str]:
    return python(
        "exo_celery.cli",
        *("worker", "--namespace", "hosts", "--nodes", NODES, "--name", name),
        *("--concurrency", str(CONCURRENCY), "--pool", "prefork", "--loglevel", "INFO"),
    )


def line_after(proc: Proc, prefix: str, timeout: float) -> str:
    """The rest of the first log line starting with `prefix`, once the process has printed it."""

    def found() -> str | None:
        for line in proc.text().splitlines():
            if line.startswith(f"{prefix} "):
                return line[len(prefix) + 1 :]
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.log.name} exited ({proc.popen.returncode}):\n{proc.text()[-3000:]}")
        return None

    return wait_until(found, timeout, what=f"{prefix!r} in {proc.log.name}")


@pytest.mark.timeout(900)  # starts servers and processes on four hosts; its own waits add up to ~7 minutes
def test_fan_out_and_unite_across_hosts_survive_a_worker_host_killed_mid_run(hosts: Hosts) -> None:
    t0 = time.monotonic()
    start_db_host(hosts)
    t_db = time.monotonic()
    env = exo_env(hosts)
    w1 = hosts.spawn("w1", "worker", worker_argv("w1"), env)
    w2 = hosts.spawn("w2", "worker", worker_argv("w2"), env)
    beat = hosts.spawn("w2", "beat", python("exo_celery.cli", "beat", "--loglevel", "INFO"), env)
    for proc in (w1, w2):
        proc.wait_for(" ready.", timeout=60)
    beat.wait_for("beat started", timeout=60)
    t_ready = time.monotonic()

    client_env = {**env, "EXO_TEST_COUNTER_URL": f"redis://{hosts.ip('db')}:6379/1"}
    client = hosts.spawn(
        "cli",
        "client",
        python("tests.multi_host_client", str(WIDTH), str(PARK_AFTER), str(CONCURRENCY), SECONDS),
        client_env,
    )
    progress = json.loads(line_after(client, "kill-now", timeout=90))
    killed = hosts.kill("w1")
    t_kill = time.monotonic()
    assert hosts.pids("w1") == [] and w1.popen.poll() is not None
    summary: dict[str, Any] = json.loads(line_after(client, "summary", timeout=120))
    t_end = time.monotonic()

    states = by_identifier(summary["states"])
    branches = states["branch"]
    starts = {int(k): v for k, v in summary["branch_starts"].items()}
    reruns = sorted(item for item, n in starts.items() if n > 1)
    host_of = {int(s["outputs"]["item"]): s["outputs"]["host"] for s in branches if s["outputs"]}
    by_host = {h: sum(1 for v in host_of.values() if v == h) for h in ("w1", "w2")}
    resent = beat.text().count("(re-sent)")
    print(
        f"\n[multi-host] db host up {t_db - t0:.1f} s, workers + beat ready {t_ready - t_db:.1f} s; "
        f"w1 killed {progress['after']} s after the trigger ({progress['branches_done']} branches done, "
        f"{killed} processes); run ended {t_end - t_kill:.1f} s after the kill ({summary['seconds']} s after "
        f"the trigger); branches by host {by_host}; beat re-sent {resent} states; total {t_end - t0:.1f} s"
    )
    assert summary["run"]["status"] == "SUCCESS", summary["run"]
    assert [s["status"] for s in states["fan"]] == ["SUCCESS"] * WIDTH  # one executed state per output
    assert len(branches) == WIDTH and {s["status"] for s in branches} == {"SUCCESS"}
    assert sorted(host_of) == list(range(WIDTH))
    (unite,) = states["unite"]  # exactly one unite state ...
    assert unite["status"] == "SUCCESS"
    assert summary["unite_runs"] == 1  # ... that executed once
    assert unite["outputs"]["count"] == str(WIDTH)
    assert json.loads(unite["outputs"]["items"]) == [str(i) for i in range(WIDTH)]  # fan-out order
    # Each branch started once, but those w1 was running when it died: they ran again, on w2.
    parked = summary["parked"]
    assert len(parked) == CONCURRENCY, parked
    assert reruns == parked and all(starts[i] == 2 for i in parked), (reruns, parked)
    assert {i: n for i, n in starts.items() if i not in parked} == {i: 1 for i in range(WIDTH) if i not in parked}
    assert {host_of[i] for i in parked} == {"w2"}
    assert by_host["w1"] == PARK_AFTER and by_host["w2"] == WIDTH - PARK_AFTER, by_host
    assert killed >= 1 + CONCURRENCY  # the worker's main process and its pool children at least
    assert resent >= CONCURRENCY  # recovered by beat on w2, within the lease (not Redis' 1 h visibility timeout)
    assert summary["live_hosts"] == ["w2"]  # w1's runtime went stale
    assert w2.popen.poll() is None and beat.popen.poll() is None  # host w2 carried on
    # Nothing landed in a working directory: host w2's own /tmp (cwd and HOME of its processes, seen
    # through /proc/<pid>/root) holds no .exo folder or key file, only multiprocessing's temp dirs.
    for proc in (w2, beat):
        left = os.listdir(f"/proc/{proc.popen.pid}/root/tmp")
        bound = {Path(p).parts[2] for p in kept_under_tmp()}  # a checkout under /tmp, bound back in
        assert [n for n in left if not n.startswith("pymp-") and n not in bound] == [], (proc.log.name, left)
    # No host reached anything on a loopback address.
    for log in hosts.logs.glob("*.log"):
        text = log.read_text(errors="replace")
        assert "127.0.0.1" not in text and "localhost" not in text, f"{log.name} names loopback"
