"""Durable time and the beat process, with real workers and real beat processes.

A private PostgreSQL + Redis stack with EXO_MAX_COUNTDOWN=1 and EXO_SWEEP_INTERVAL=1: every
delay longer than a second waits in the ledger as CREATED and only a beat process can release
it. Two beat processes run for the whole module (cron firings must happen once). The embedded
default gets the same long-delay check with its own worker and beat.

Order matters for time, not for correctness: the cron test waits for the next minute boundary
after the beats started, so the tests before it run "for free" inside that minute; the
retention test runs last because its beat purges every finished run of the module's ledger.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from exo_celery import (
    CronTrigger,
    GraphNodeModel,
    NotFoundError,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
)
from exo_celery.beat import Beat
from exo_celery.ledger.db import get_engine
from exo_celery.ledger.tables import runs, states

from .support import Proc, Stack, run, uid
from .timing import NODES_SPEC, NS, by_identifier, private_pg, report_lateness, stamps, wait_until
from .timing import nodes as timing_nodes

LEDGER_ONLY = {"EXO_MAX_COUNTDOWN": "1", "EXO_SWEEP_INTERVAL": "1"}
EARLY = 0.03  # a message may be claimed up to 20 ms before due (EARLY_TOLERANCE), plus clock noise
LATE = 2.5  # slack for "not much later" on a loaded 2-core machine


@dataclass
class BeatStack:
    stack: Stack
    manager: StateManager
    cron_graph: str
    beats: list[Proc]
    beats_started: float


def fast_stop(stack: Stack) -> None:
    """The test is over: SIGKILL the processes (a warm shutdown only costs time here)."""
    for proc in stack.procs:
        proc.kill()
    stack.stop_all()


@pytest.fixture(scope="module")
def beat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BeatStack]:
    with private_pg(tmp_path_factory.mktemp("beat"), EXO_LEASE_SECONDS="3", **LEDGER_ONLY) as stack:
        try:
            worker = stack.start_worker(NS, nodes=NODES_SPEC, wait=False)
            m = stack.manager(NS)
            cron_graph = uid("cron")
            # Upserted before the beats start, so their first tick already knows it.
            m.upsert_graph_sync(
                cron_graph,
                [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "tick"})],
                secrets={},
                triggers=[CronTrigger(expression="* * * * *")],
            )
            beats = [stack.start_beat(wait=False), stack.start_beat(wait=False)]
            for proc in (worker, *beats):
                proc.wait_for(" ready." if proc is worker else "beat started")
            yield BeatStack(stack, m, cron_graph, beats, time.time())
        finally:
            fast_stop(stack)


def test_long_delays_wait_in_the_ledger_and_beat_releases_them_on_time(beat_stack: BeatStack, tmp_path: Path) -> None:
    """A 5 s requeue, shorter polls, start_delays and a retry backoff, all longer than EXO_MAX_COUNTDOWN=1."""
    m = beat_stack.manager
    polls = {"p5000": (1, 5000), "p3000": (2, 3000), "p2000": (2, 2000), "p1500": (2, 1500)}
    poll_graph = uid("poll")
    run(
        m.upsert_graph(
            poll_graph,
            [GraphNodeModel(node_name="Poll", identifier="poll", inputs={"path": "", "times": "", "delay_ms": ""})],
            secrets={},
        )
    )
    stamp_graph = uid("stamp")
    run(
        m.upsert_graph(
            stamp_graph,
            [GraphNodeModel(node_name="Stamp", identifier="s", inputs={"path": "", "tag": ""})],
            secrets={},
        )
    )
    retry_graph = uid("retry")
    retry_path = tmp_path / "retry"
    run(
        m.upsert_graph(
            retry_graph,
            [GraphNodeModel(node_name="FlakyStamp", identifier="f", inputs={"path": str(retry_path), "times": "1"})],
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=2500),
        )
    )

    run_ids: dict[str, str] = {}
    for key, (times, delay) in polls.items():
        inputs = {"path": str(tmp_path / key), "times": str(times), "delay_ms": str(delay)}
        run_ids[key] = run(m.trigger(poll_graph, inputs=inputs))["run_id"]
    run_ids["retry"] = run(m.trigger(retry_graph))["run_id"]
    triggered_at: dict[str, float] = {}
    for delay in (2000, 3500, 5000):
        key = f"start{delay}"
        triggered_at[key] = time.time()
        inputs = {"path": str(tmp_path / key), "tag": key}
        run_ids[key] = run(m.trigger(stamp_graph, inputs=inputs, start_delay=delay))["run_id"]

    # While they wait, the delayed states are CREATED in the ledger (not in the broker).
    wait_until(lambda: stamps(Path(f"{tmp_path}/p5000.times")), timeout=20, what="first poll of p5000")
    wait_until(lambda: len(stamps(retry_path)) == 1, timeout=20, what="first failure of the retry graph")
    time.sleep(0.5)
    (p5000,) = run(m.list_states(run_ids["p5000"]))
    assert (p5000["status"], p5000["retry_count"]) == ("CREATED", 0)
    (start5000,) = run(m.list_states(run_ids["start5000"]))
    assert start5000["status"] == "CREATED"
    assert run(m.get_run(run_ids["start5000"]))["status"] == "PENDING"
    retry_states = sorted(run(m.list_states(run_ids["retry"])), key=lambda s: s["retry_count"])
    assert [s["status"] for s in retry_states] == ["RETRY_CREATED", "CREATED"]

    for key, run_id in run_ids.items():
        assert run(m.wait(run_id, timeout=30))["status"] == "SUCCESS", key

    lateness: list[float] = []
    for key, (times, delay) in polls.items():
        t = stamps(Path(f"{tmp_path}/{key}.times"))
        assert len(t) == times + 1, key
        for a, b in pairwise(t):
            lateness.append(b - a - delay / 1000)
    for key, at in triggered_at.items():
        (started,) = stamps(tmp_path / key)
        lateness.append(started - at - int(key.removeprefix("start")) / 1000)
    first, second = stamps(retry_path)
    lateness.append(second - first - 2.5)
    (p5000,) = run(m.list_states(run_ids["p5000"]))
    assert (p5000["status"], p5000["retry_count"], p5000["outputs"]["calls"]) == ("SUCCESS", 0, "2")

    report_lateness("pg-redis ledger path (EXO_MAX_COUNTDOWN=1, sweep 1 s, 2 beats)", lateness)
    assert len(lateness) == 11
    assert min(lateness) >= -EARLY, f"a state ran {-min(lateness):.3f} s before it was due"
    assert max(lateness) <= LATE, f"a state ran {max(lateness):.3f} s after it was due"
    assert statistics.median(lateness) <= 1.0


def test_a_cron_graph_upserted_just_before_its_fire_time_fires_at_it(fresh_pg: Stack) -> None:
    """In-process Beat ticks at chosen times: a tick 5 s before a minute boundary, the upsert, a tick 1 s after."""
    settings = fresh_pg.settings()
    Runtime(NS, "registrar", timing_nodes.NODES, settings=settings).register()
    m = fresh_pg.manager(NS)
    beat = Beat(settings)
    boundary = (time.time() // 60) * 60  # the latest minute boundary (in the past: ticks may be replayed)
    beat.cron_checked = boundary - 6
    beat.fire_crons(boundary - 5)
    name = uid("cron")
    m.upsert_graph_sync(
        name,
        [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "tick"})],
        secrets={},
        triggers=[CronTrigger(expression="* * * * *")],
    )
    beat.fire_crons(boundary + 1)
    assert len(m.list_runs_sync(name)) == 1


def test_embedded_beat_releases_long_delays(tmp_path: Path) -> None:
    """The embedded default (SQLite + filesystem broker) with its own worker and beat process."""
    stack = Stack("embedded-private", tmp_path / "home", extra=dict(LEDGER_ONLY))
    try:
        worker = stack.start_worker(NS, nodes=NODES_SPEC, wait=False)
        beat = stack.start_beat(wait=False)
        worker.wait_for(" ready.")
        beat.wait_for("beat started")
        m = stack.manager(NS)
        name = uid("poll")
        path = tmp_path / "poll"
        run(
            m.upsert_graph(
                name,
                [
                    GraphNodeModel(
                        node_name="Poll",
                        identifier="poll",
                        inputs={"path": str(path), "times": "1", "delay_ms": "3000"},
                    )
                ],
                secrets={},
            )
        )
        stamp_graph = uid("stamp")
        stamp_path = tmp_path / "stamp"
        run(
            m.upsert_graph(
                stamp_graph,
                [GraphNodeModel(node_name="Stamp", identifier="s", inputs={"path": str(stamp_path), "tag": "x"})],
                secrets={},
            )
        )
        poll_run = run(m.trigger(name))["run_id"]
        t0 = time.time()
        delayed_run = run(m.trigger(stamp_graph, start_delay=2500))["run_id"]
        assert [s["status"] for s in run(m.list_states(delayed_run))] == ["CREATED"]
        wait_until(lambda: stamps(Path(f"{path}.times")), timeout=20, what="first poll")
        time.sleep(0.5)
        assert [s["status"] for s in run(m.list_states(poll_run))] == ["CREATED"]
        assert run(m.wait(poll_run, timeout=30))["status"] == "SUCCESS"
        assert run(m.wait(delayed_run, timeout=30))["status"] == "SUCCESS"
        first, second = stamps(Path(f"{path}.times"))
        (started,) = stamps(stamp_path)
        lateness = [second - first - 3.0, started - t0 - 2.5]
        report_lateness("embedded ledger path (EXO_MAX_COUNTDOWN=1, sweep 1 s)", lateness)
        assert min(lateness) >= -EARLY and max(lateness) <= LATE, lateness
    finally:
        fast_stop(stack)


def test_ledger_path_requeue_keeps_the_state_and_runs_its_child_once(beat_stack: BeatStack, tmp_path: Path) -> None:
    """A ledger-path requeue keeps the same state (no new state, no retry spent) and runs its child once."""
    m = beat_stack.manager
    name = uid("poll")
    path = tmp_path / "poll"
    count = tmp_path / "count"
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Poll",
                    identifier="poll",
                    inputs={"path": str(path), "times": "1", "delay_ms": "1200"},
                    next_nodes=["c"],
                ),
                GraphNodeModel(
                    node_name="Count", identifier="c", inputs={"item": "${{ poll.outputs.calls }}", "path": str(count)}
                ),
            ],
            secrets={},
        )
    )
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=30))["status"] == "SUCCESS"
    by = by_identifier(run(m.list_states(run_id)))
    assert [(s["status"], s["retry_count"]) for s in by["poll"]] == [("SUCCESS", 0)]
    assert count.read_text() == "2\n"


def test_beat_purges_a_backlog_of_expired_runs_promptly(fresh_pg: Stack) -> None:
    """520 finished runs past a 1 s retention; an in-process Beat ticking for 2.5 s must purge them all."""
    fresh_pg.extra.update(EXO_RETENTION_SECONDS="1")
    settings = fresh_pg.settings()
    Runtime(NS, "registrar", timing_nodes.NODES, settings=settings).register()
    m = fresh_pg.manager(NS)
    name = uid("ret")
    m.upsert_graph_sync(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={})

    # Never published (due in ~11 days, beyond EXO_MAX_COUNTDOWN), then cancelled: finished runs with a store.
    def finished_run(_: int) -> None:
        m.cancel_sync(m.trigger_sync(name, store={"k": "v"}, start_delay=10**9)["run_id"])

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(finished_run, range(520)))
    time.sleep(1.1)
    beat = Beat(settings)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        time.sleep(beat.tick() / 10)
    assert m.list_runs_sync(name, limit=1000) == []


def test_a_purge_transaction_is_capped_by_state_rows_and_deletes_whole_runs(fresh_pg: Stack) -> None:
    """Finished runs of 3 states and of 1 state, purged with a cap of 4 state rows per transaction:
    several transactions, each of whole runs only (a run wider than the cap would go alone)."""
    settings = fresh_pg.settings()
    Runtime(NS, "registrar", timing_nodes.NODES, settings=settings).register()
    m = fresh_pg.manager(NS)
    name = uid("ret")
    m.upsert_graph_sync(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={})
    # Never published (due far beyond EXO_MAX_COUNTDOWN), then cancelled: finished runs of one state;
    # every other one gets two more state rows (copies of its root under new ids).
    ids = [m.trigger_sync(name, start_delay=10**9)["run_id"] for _ in range(8)]
    for run_id in ids:
        m.cancel_sync(run_id)
    with get_engine(m.settings.ledger_url).begin() as conn:
        for run_id in ids[::2]:
            root = dict(conn.execute(select(states).where(states.c.run_id == run_id)).mappings().one())
            for k in (1, 2):
                conn.execute(insert(states).values({**root, "id": uuid.uuid4().hex, "identifier": f"e{k}"}))
    widths = {r: len(m.repo.list_states(r)) for r in ids}
    assert sorted(widths.values()) == [1] * 4 + [3] * 4
    cutoff = m.repo.get_run(ids[-1])["finished_at"] + 0.001
    left, rounds = set(ids), 0
    while done := m.repo.purge_finished_runs(cutoff, batch=500, max_states=4):
        rounds += 1
        now_left = {r for r in left if m.repo.get_run(r) is not None}
        gone = left - now_left
        assert len(gone) == done and (done == 1 or sum(widths[r] for r in gone) <= 4)
        for r in now_left | gone:  # whole runs only: all their states, or none and no run row
            assert len(m.repo.list_states(r)) == (widths[r] if r in now_left else 0)
        left = now_left
    assert not left and rounds >= 3
    assert m.repo.purge_finished_runs(cutoff, batch=500, max_states=4) == 0  # safe to repeat


def test_two_beats_fire_a_cron_trigger_once_per_minute(beat_stack: BeatStack) -> None:
    """Waits for the first minute boundary after both beats started (up to ~65 s)."""
    m = beat_stack.manager
    boundary = math.ceil((beat_stack.beats_started + 0.5) / 60) * 60
    pause = boundary + 4 - time.time()
    if pause > 0:
        time.sleep(pause)
    assert all(b.popen.poll() is None for b in beat_stack.beats), "both beat processes must still run"
    fired = run(m.list_runs(beat_stack.cron_graph, limit=100))
    minutes = [int(datetime.fromisoformat(r["created_at"]).timestamp() // 60) for r in fired]
    assert len(minutes) == len(set(minutes)), f"a minute fired twice: {sorted(minutes)}"
    assert boundary // 60 in minutes, f"no run for the minute starting at {boundary}"
    for r in fired:
        assert run(m.wait(r["run_id"], timeout=20))["status"] == "SUCCESS"
    with get_engine(m.settings.ledger_url).connect() as conn:
        keys = list(conn.execute(select(runs.c.cron_key).where(runs.c.graph_name == beat_stack.cron_graph)).scalars())
    assert len(keys) == len(fired) and None not in keys and len(set(keys)) == len(keys)
    assert any(k.endswith(f"/{boundary}") for k in keys), keys


def test_retention_purges_finished_runs_and_their_store(beat_stack: BeatStack) -> None:
    """A beat with EXO_RETENTION_SECONDS=1 purges (on its first tick) runs that finished over a second ago.

    Last in the module: it purges every finished run of the module's ledger (the cron runs too)."""
    stack, m = beat_stack.stack, beat_stack.manager
    name = uid("ret")
    run(
        m.upsert_graph(
            name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "${{ store.k }}"})], secrets={}
        )
    )
    finished = run(m.trigger(name, store={"k": "old"}))["run_id"]
    assert run(m.wait(finished, timeout=30))["status"] == "SUCCESS"
    pending = run(m.trigger(name, store={"k": "new"}, start_delay=600_000))["run_id"]
    assert m.repo.read_store(finished) == {"k": "old"}
    time.sleep(1.2)

    purger = stack.start_beat(env={"EXO_RETENTION_SECONDS": "1"})
    try:

        def purged() -> bool:
            try:
                run(m.get_run(finished))
            except NotFoundError:
                return True
            return False

        wait_until(purged, timeout=15, interval=0.2, what="the finished run to be purged")
    finally:
        purger.kill()
    assert m.repo.read_store(finished) == {}
    assert m.repo.list_states(finished) == []
    with pytest.raises(NotFoundError):
        run(m.list_states(finished))
    # A run that has not finished is kept, with its store.
    assert run(m.get_run(pending))["status"] == "PENDING"
    assert m.repo.read_store(pending) == {"k": "new"}
    assert run(m.cancel(pending))["status"] == "CANCELLED"
