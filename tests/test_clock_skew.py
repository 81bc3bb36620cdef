"""Hosts whose clocks disagree (issue 17): workers, beat and a client under Debian's `faketime`.

Every lease, due time and cron decision is taken on the ledger's clock, so a process whose own
clock runs 60 s or an hour ahead of (or behind) the others still:
- never starts a running state a second time (a lease renewed by its holder stays held),
- never runs a retry, a requeue or a delayed start before it is due, nor much later,
- fires a cron trigger once per tick, at the tick by the ledger's time,
- records run durations that are non-negative and right.

Each test prints the executions per state it saw (the closing note of issue 17 quotes them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from exo_celery import CronTrigger, GraphNodeModel, RetryPolicyModel, RetryStrategyEnum, Runtime
from exo_celery.ledger.db import get_engine
from exo_celery.ledger.tables import heartbeats, runs, states

from . import skew_nodes
from .support import CI, Stack, uid
from .timing import private_pg, stamps, wait_until

NS = "skew"
NODES = "tests.skew_nodes:NODES"
LEASE = 3.0
DELAY = 2.0  # seconds, of the retry, the requeue and the delayed start
EARLY = 0.05  # EARLY_TOLERANCE (20 ms) plus the ledger clock's round trip
LATE = 4.0  # "not much later", on a loaded 2-core machine
SKEWS = ["+60s", "-60s", "+1h", "-1h"]
SETTINGS = {"EXO_LEASE_SECONDS": str(LEASE), "EXO_SWEEP_INTERVAL": "1"}


def faketime(offset: str) -> list[str]:
    """The command prefix that runs a process with its clock moved by `offset` (libfaketime)."""
    path = shutil.which("faketime")
    if path is None:
        message = "Debian's faketime is not installed (apt-get install faketime)"
        if CI:
            pytest.fail(f"{message}; CI=true: the clock-skew tests must run", pytrace=False)
        pytest.skip(message)
    return [path, "-f", offset]


def ledger_rows(stack: Stack, table: Any, *where: Any) -> list[dict[str, Any]]:
    assert stack.database_url is not None
    with get_engine(stack.database_url).connect() as conn:
        return [dict(r) for r in conn.execute(select(table).where(*where)).mappings()]


def ended_run(stack: Stack, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        (row,) = ledger_rows(stack, runs, runs.c.id == run_id)
        return row if row["status"] in ("SUCCESS", "FAILED", "CANCELLED") else None

    return wait_until(ended, timeout, 0.1, f"run {run_id} ended")


def beat_ticked_for(stack: Stack, seconds: float, timeout: float = 60.0) -> None:
    """Wait until beat's heartbeats (written on the ledger's clock) span `seconds` from the first one seen."""
    assert stack.database_url is not None

    def newest() -> float | None:
        with get_engine(stack.database_url).connect() as conn:
            return conn.execute(select(func.max(heartbeats.c.beat_at))).scalar()

    first = wait_until(newest, timeout, 0.2, "a beat heartbeat")
    wait_until(lambda: (newest() or 0) >= first + seconds, timeout, 0.2, f"beat ticking for {seconds} s")


def upsert(stack: Stack, name: str, nodes: list[GraphNodeModel], **kw: Any) -> None:
    stack.manager(NS).upsert_graph_sync(name, nodes, secrets={}, **kw)


@pytest.mark.parametrize("skew", SKEWS)
def test_a_skewed_worker_and_beat_start_no_state_twice_and_run_nothing_early(skew: str, tmp_path: Path) -> None:
    wrap = faketime(skew)
    with private_pg(tmp_path / "home", **SETTINGS) as stack:
        honest = stack.start_worker(NS, nodes=NODES)
        m = stack.manager(NS)
        hold, retry, requeue = uid("hold"), uid("retry"), uid("requeue")
        upsert(stack, hold, [GraphNodeModel(node_name="Hold", identifier="h", inputs={"path": "", "release": ""})])
        upsert(
            stack,
            retry,
            [GraphNodeModel(node_name="Flaky", identifier="f", inputs={"path": "", "times": ""})],
            retry_policy=RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=DELAY * 1000),
        )
        upsert(
            stack,
            requeue,
            [GraphNodeModel(node_name="Poll", identifier="p", inputs={"path": "", "times": "", "delay_ms": ""})],
        )

        # 1. A state held by the honest worker, while a skewed worker and a skewed beat look on.
        held, release = tmp_path / "held", tmp_path / "release"
        hold_run = m.trigger_sync(hold, {"path": str(held), "release": str(release)})["run_id"]
        wait_until(lambda: stamps(held), 60, 0.1, "the held state started")
        stack.start_worker(NS, nodes=NODES, wrap=wrap)
        stack.start_beat(wrap=wrap)
        beat_ticked_for(stack, 3 * LEASE)  # three leases: each renewed by the holder, none taken over
        release.touch()
        hold_ended = ended_run(stack, hold_run)

        # 2. Due times set and read by the skewed host alone (the honest worker is gone).
        honest.stop()
        flaky, polls = tmp_path / "flaky", tmp_path / "poll"
        retry_run = m.trigger_sync(retry, {"path": str(flaky), "times": "1"})["run_id"]
        requeue_run = m.trigger_sync(requeue, {"path": str(polls), "times": "1", "delay_ms": str(int(DELAY * 1000))})[
            "run_id"
        ]
        delayed_run = trigger_from(stack, skew, hold, {"path": str(tmp_path / "late"), "release": str(release)})
        ended = {r: ended_run(stack, r) for r in (retry_run, requeue_run, delayed_run)}

        (held_state,) = ledger_rows(stack, states, states.c.run_id == hold_run)
        retried = sorted(ledger_rows(stack, states, states.c.run_id == retry_run), key=lambda s: s["retry_count"])
        (delayed,) = ledger_rows(stack, states, states.c.run_id == delayed_run)
        executions = {
            "held state": len(stamps(held)),
            "flaky state + its retry": len(flaky.read_text()),
            "requeued state": len(stamps(Path(f"{polls}.times"))),
            "delayed start": len(stamps(tmp_path / "late")),
        }
        print(f"\nskew {skew}: executions {executions}; held state's deliveries claimed: {held_state['attempts']}")

        assert executions == {"held state": 1, "flaky state + its retry": 2, "requeued state": 2, "delayed start": 1}
        assert held_state["attempts"] == 1 and held_state["status"] == "SUCCESS"
        assert [s["status"] for s in retried] == ["RETRY_CREATED", "SUCCESS"]
        retry_gap = retried[1]["started_at"] - retried[0]["updated_at"]
        poll_times = stamps(Path(f"{polls}.times"))  # one process, one (skewed) clock: the gap is right
        requeue_gap = poll_times[1] - poll_times[0]
        start_gap = delayed["started_at"] - delayed["created_at"]
        gaps = f"retry after {retry_gap:.3f} s, requeue after {requeue_gap:.3f} s, start after {start_gap:.3f} s"
        print(f"skew {skew}: {gaps}")
        for gap in (retry_gap, requeue_gap, start_gap):
            assert DELAY - EARLY <= gap <= DELAY + LATE
        for run_row in (hold_ended, *ended.values()):
            assert run_row["status"] == "SUCCESS"
            duration = run_row["finished_at"] - run_row["started_at"]
            assert 0 <= duration <= 3 * LEASE + 60
        assert DELAY - EARLY <= ended[retry_run]["finished_at"] - ended[retry_run]["started_at"] <= DELAY + LATE + 2


def trigger_from(stack: Stack, skew: str, graph: str, inputs: dict[str, str]) -> str:
    """`exo-celery trigger --start-delay` from a client host whose clock is moved by `skew`."""
    argv = [*faketime(skew), sys.executable, "-m", "exo_celery.cli", "trigger", graph, "--namespace", NS]
    argv += [a for k, v in inputs.items() for a in ("--input", f"{k}={v}")]
    argv += ["--start-delay", str(int(DELAY * 1000)), "--json"]
    done = subprocess.run(argv, env=stack.env, capture_output=True, text=True, timeout=60, check=True)
    return str(json.loads(done.stdout)["run_id"])


def test_beats_an_hour_apart_fire_a_cron_tick_once_at_the_ledgers_time(tmp_path: Path) -> None:
    """Two beats, one a minute ahead and one an hour behind: each tick fires once, at the tick."""
    ahead, behind = faketime("+60s"), faketime("-1h")
    with private_pg(tmp_path / "home", **SETTINGS) as stack:
        Runtime(NS, "registrar", skew_nodes.NODES, settings=stack.settings()).register()
        name = uid("cron")
        upsert(
            stack,
            name,
            [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "tick"})],
            triggers=[CronTrigger(expression="* * * * *")],
        )
        stack.start_beat(wrap=ahead, wait=False)
        stack.start_beat(wrap=behind, wait=False)
        fired = wait_until(lambda: ledger_rows(stack, runs, runs.c.graph_name == name), 75, 0.2, "a cron run")
        beat_ticked_for(stack, 3)  # both beats have had ticks past the fire time
        fired = ledger_rows(stack, runs, runs.c.graph_name == name)
        ticks = [float(r["cron_key"].rsplit("/", 1)[1]) for r in fired]
        late = [r["created_at"] - float(r["cron_key"].rsplit("/", 1)[1]) for r in fired]
        print(f"\ncron runs: {len(fired)} for {len(set(ticks))} tick(s); created after the tick by {late}")
        assert len(fired) == len(set(ticks)) == 1
        assert all(0 <= d <= LATE for d in late), late
        now = time.time()
        assert abs(ticks[0] - now) < 120  # the tick is the ledger's minute, not a skewed beat's
