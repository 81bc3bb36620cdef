"""Leases and recovery with real workers and a real beat process (PostgreSQL + Redis).

The module's stack runs EXO_LEASE_SECONDS=3 and EXO_SWEEP_INTERVAL=1 with two workers and a
beat. Alongside, in a background thread, the same SIGKILL scenario runs on a second private
stack with the default settings (lease 30 s, sweep 5 s) to measure the recovery time users get
out of the box; the last test collects it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exo_celery import GraphNodeModel, StateManager

from .support import Proc, Stack, check_postgres, check_redis, require, run, uid
from .timing import NODES_SPEC, NS, by_identifier, private_pg, stamps, wait_until

HB_NS = "timing-hb"  # served by a worker whose own lease is 2 s
LEASE, SWEEP = 3.0, 1.0


@dataclass
class RecoveryStack:
    stack: Stack
    manager: StateManager
    workers: list[Proc]  # both serve NS; the SIGKILL test kills one
    heartbeat_worker: Proc


def fast_stop(stack: Stack) -> None:
    for proc in stack.procs:
        proc.kill()
    stack.stop_all()


def sleep_then_count(m: StateManager, name: str, seconds: str, sleeps: Path, counts: Path) -> None:
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Sleep",
                    identifier="sleep",
                    inputs={"seconds": seconds, "path": str(sleeps)},
                    next_nodes=["count"],
                ),
                GraphNodeModel(node_name="Count", identifier="count", inputs={"item": "once", "path": str(counts)}),
            ],
            secrets={},
        )
    )


def kill_mid_node(m: StateManager, workers: list[Proc], name: str, sleeps: Path, counts: Path) -> dict[str, Any]:
    """Trigger sleep(4 s) -> count, SIGKILL the worker running the Sleep state 1 s in, wait for the run."""
    run_id = run(m.trigger(name))["run_id"]
    first = wait_until(lambda: stamps(sleeps, column=1), timeout=30, what="the Sleep state to start")
    pid = int(sleeps.read_text().split()[0])
    group = os.getpgid(pid)  # each worker runs in its own process group (its pool children too)
    (victim,) = [w for w in workers if w.popen.pid == group]
    time.sleep(max(0.0, first[0] + 1.0 - time.time()))
    killed_at = time.time()
    victim.kill(signal.SIGKILL)
    victim.popen.wait(timeout=10)
    done = run(m.wait(run_id, timeout=90))
    starts = stamps(sleeps, column=1)
    pids = [int(line.split()[0]) for line in sleeps.read_text().splitlines()]
    return {
        "run": done,
        "states": run(m.list_states(run_id)),
        "starts": starts,
        "pids": pids,
        "victim": victim,
        "killed_at": killed_at,
        "recovery": starts[-1] - killed_at,
        "counts": counts.read_text() if counts.exists() else "",
    }


class DefaultSettingsScenario(threading.Thread):
    """The SIGKILL scenario on a private stack with default EXO_LEASE_SECONDS / EXO_SWEEP_INTERVAL."""

    def __init__(self, home: Path) -> None:
        super().__init__(name="default-settings-recovery", daemon=True)
        self.home = home
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with private_pg(self.home) as stack:
                try:
                    workers = [stack.start_worker(NS, nodes=NODES_SPEC, concurrency=1, wait=False) for _ in range(2)]
                    beat = stack.start_beat(wait=False)
                    for w in workers:
                        w.wait_for(" ready.")
                    beat.wait_for("beat started")
                    m = stack.manager(NS)
                    assert (m.settings.lease_seconds, m.settings.sweep_interval) == (30.0, 5.0)
                    name, sleeps, counts = uid("kill"), self.home / "sleeps", self.home / "counts"
                    sleep_then_count(m, name, "4", sleeps, counts)
                    self.result = kill_mid_node(m, workers, name, sleeps, counts)
                finally:
                    fast_stop(stack)
        except BaseException as exc:
            self.error = exc


@pytest.fixture(scope="module")
def default_settings_scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultSettingsScenario]:
    """Started with the module's stack (before its first test); runs in the background (about 30-45 s)."""
    require("PostgreSQL", check_postgres)
    require("Redis", check_redis)
    scenario = DefaultSettingsScenario(tmp_path_factory.mktemp("default-recovery"))
    scenario.start()
    yield scenario
    scenario.join(timeout=120)


@pytest.fixture(scope="module")
def rec(
    tmp_path_factory: pytest.TempPathFactory, default_settings_scenario: DefaultSettingsScenario
) -> Iterator[RecoveryStack]:
    with private_pg(
        tmp_path_factory.mktemp("recovery"), EXO_LEASE_SECONDS=str(LEASE), EXO_SWEEP_INTERVAL=str(SWEEP)
    ) as stack:
        try:
            workers = [stack.start_worker(NS, nodes=NODES_SPEC, concurrency=1, wait=False) for _ in range(2)]
            hb = stack.start_worker(HB_NS, nodes=NODES_SPEC, concurrency=2, env={"EXO_LEASE_SECONDS": "2"}, wait=False)
            beat = stack.start_beat(wait=False)
            for w in (*workers, hb):
                w.wait_for(" ready.")
            beat.wait_for("beat started")
            yield RecoveryStack(stack, stack.manager(NS), workers, hb)
        finally:
            fast_stop(stack)


def test_worker_killed_mid_node_is_recovered_and_the_next_node_runs_once(rec: RecoveryStack, tmp_path: Path) -> None:
    m = rec.manager
    name = uid("kill")
    sleeps, counts = tmp_path / "sleeps", tmp_path / "counts"
    sleep_then_count(m, name, "4", sleeps, counts)
    r = kill_mid_node(m, rec.workers, name, sleeps, counts)
    print(
        f"\n[recovery] SIGKILL mid-node, EXO_LEASE_SECONDS={LEASE:g} EXO_SWEEP_INTERVAL={SWEEP:g}: "
        f"state re-started {r['recovery']:.2f} s after the kill"
    )
    assert r["run"]["status"] == "SUCCESS"
    assert len(r["starts"]) == 2, r["starts"]  # the killed execution, then the recovered one
    (survivor,) = [w for w in rec.workers if w is not r["victim"]]
    assert os.getpgid(r["pids"][1]) == survivor.popen.pid  # re-run by the other worker
    assert r["counts"] == "once\n"  # the next node ran exactly once
    by = by_identifier(r["states"])
    assert [(s["status"], s["retry_count"]) for s in by["sleep"]] == [("SUCCESS", 0)]
    assert [s["status"] for s in by["count"]] == ["SUCCESS"]
    assert r["recovery"] <= LEASE + SWEEP + 3.0, f"recovered {r['recovery']:.2f} s after the kill"


def test_a_long_node_on_a_live_worker_is_never_dispatched_twice(rec: RecoveryStack, tmp_path: Path) -> None:
    """Lease 2 s, beat sweeping every second, a 7 s node: the heartbeat keeps the lease."""
    m = rec.stack.manager(HB_NS)
    name = uid("long")
    sleeps, counts = tmp_path / "sleeps", tmp_path / "counts"
    sleep_then_count(m, name, "7", sleeps, counts)
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=40))["status"] == "SUCCESS"
    assert len(stamps(sleeps, column=1)) == 1, sleeps.read_text()
    assert counts.read_text() == "once\n"


def test_a_message_lost_between_ledger_and_broker_is_resent_by_beat(rec: RecoveryStack, tmp_path: Path) -> None:
    """The root state is committed QUEUED but its message never reaches the broker (a crash after commit)."""
    m = rec.stack.manager(NS)
    m._publish = lambda dispatches: None  # type: ignore[method-assign]  # the process "dies" before publishing
    name = uid("lost")
    path = tmp_path / "stamps"
    run(
        m.upsert_graph(
            name,
            [GraphNodeModel(node_name="Stamp", identifier="s", inputs={"path": str(path), "tag": "x"})],
            secrets={},
        )
    )
    t0 = time.time()
    run_id = run(m.trigger(name))["run_id"]
    assert [s["status"] for s in run(m.list_states(run_id))] == ["QUEUED"]
    assert run(m.wait(run_id, timeout=30))["status"] == "SUCCESS"
    (started,) = stamps(path)
    print(f"\n[recovery] lost message re-sent by beat: ran {started - t0:.2f} s after the trigger (lease {LEASE:g} s)")
    assert started - t0 <= LEASE + SWEEP + 3.0


def test_recovery_time_with_default_settings(default_settings_scenario: DefaultSettingsScenario) -> None:
    """Collects the background scenario: lease 30 s (renewed every 10 s) and sweep 5 s give about 20-35 s."""
    default_settings_scenario.join(timeout=120)
    assert not default_settings_scenario.is_alive(), "the default-settings scenario did not finish"
    if default_settings_scenario.error is not None:
        raise default_settings_scenario.error
    r = default_settings_scenario.result
    assert r is not None
    print(
        f"\n[recovery] SIGKILL mid-node, default settings (EXO_LEASE_SECONDS=30, EXO_SWEEP_INTERVAL=5): "
        f"state re-started {r['recovery']:.2f} s after the kill"
    )
    assert r["run"]["status"] == "SUCCESS"
    assert len(r["starts"]) == 2 and r["counts"] == "once\n"
    assert 15.0 <= r["recovery"] <= 30.0 + 5.0 + 5.0, r["recovery"]


def test_embedded_worker_survives_a_burst_of_triggers(tmp_path: Path) -> None:
    """The embedded default, default settings: 500 runs triggered back to back from the client process."""
    stack = Stack("embedded-private", tmp_path / "home")
    try:
        worker = stack.start_worker(NS, nodes=NODES_SPEC)
        m = stack.manager(NS)
        name = uid("burst")
        m.upsert_graph_sync(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={})
        for _ in range(500):
            m.trigger_sync(name)

        def settled() -> bool:
            if "Unrecoverable error" in worker.text() or worker.popen.poll() is not None:
                return True
            return all(r["status"] == "SUCCESS" for r in m.list_runs_sync(name, limit=1000))

        wait_until(settled, timeout=60, interval=0.5, what="the burst to finish")
        assert "Unrecoverable error" not in worker.text(), worker.text()[-1500:]
        assert [r["status"] for r in m.list_runs_sync(name, limit=1000)] == ["SUCCESS"] * 500
    finally:
        fast_stop(stack)
