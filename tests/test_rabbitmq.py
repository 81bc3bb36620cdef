"""RabbitMQ as the broker (`amqp://`): fan-out + unite, countdowns, retries, and delays that wait in the ledger."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from exo_celery import GraphNodeModel, UnitesModel

from .conftest import SHARED_NAMESPACE as NS
from .support import Stack, run, uid


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_fan_out_unite_countdown_requeue_and_retry_on_rabbitmq(pg_rabbitmq_stack: Stack, tmp_path: Path) -> None:
    stack = pg_rabbitmq_stack
    assert stack.settings().broker.startswith("amqp://")
    m = stack.manager(NS)
    fan, timed, flaky = uid("fan"), uid("timed"), uid("flaky")
    items = [f"i{n}" for n in range(8)]
    run(
        m.upsert_graph(
            fan,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": json.dumps(items)}, next_nodes=["up"]
                ),
                GraphNodeModel(
                    node_name="Upper", identifier="up", inputs={"item": "${{ split.outputs.item }}"}, next_nodes=["all"]
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="all",
                    inputs={"values": "${{ up.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
        )
    )
    poll_path = tmp_path / "poll"
    run(
        m.upsert_graph(
            timed,
            [
                GraphNodeModel(
                    node_name="Poll",
                    identifier="p",
                    inputs={"path": str(poll_path), "times": "1", "delay_ms": "400"},
                )
            ],
            secrets={},
        )
    )
    run(
        m.upsert_graph(
            flaky,
            [GraphNodeModel(node_name="Flaky", identifier="f", inputs={"path": str(tmp_path / "flaky"), "times": "1"})],
            secrets={},
            retry_policy={"max_retries": 2, "strategy": "FIXED", "backoff_factor": 300},
        )
    )

    started = time.time()
    fan_run = run(m.trigger(fan))["run_id"]
    timed_run = run(m.trigger(timed, start_delay=1500))["run_id"]  # a 1.5 s countdown held by the worker
    flaky_run = run(m.trigger(flaky))["run_id"]
    for run_id in (fan_run, timed_run, flaky_run):
        assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"

    collected = next(s for s in run(m.list_states(fan_run)) if s["identifier"] == "all")
    assert json.loads(collected["outputs"]["values"]) == [f"I{n}!" for n in range(8)]

    # start_delay: the first execution no earlier than due; the requeue (400 ms) no earlier either.
    calls = [float(line) for line in Path(str(poll_path) + ".times").read_text().split()]
    assert len(calls) == 2
    assert started + 1.5 <= calls[0] < started + 1.5 + 5
    assert calls[1] - calls[0] >= 0.4

    attempts = sorted(run(m.list_states(flaky_run)), key=lambda s: s["retry_count"])
    assert [(s["status"], s["retry_count"]) for s in attempts] == [("RETRY_CREATED", 0), ("SUCCESS", 1)]
    retry = attempts[1]
    assert epoch(retry["due_at"]) - epoch(attempts[0]["updated_at"]) >= 0.29  # the 300 ms backoff
    assert epoch(retry["updated_at"]) >= epoch(retry["due_at"])


def test_a_delay_longer_than_max_countdown_waits_in_the_ledger_until_beat_sends_it(pg_rabbitmq_stack: Stack) -> None:
    """Long delays never sit unacknowledged in RabbitMQ (its consumer_timeout): beat releases them when due."""
    stack = pg_rabbitmq_stack
    beat = stack.start_beat(env={"EXO_MAX_COUNTDOWN": "1", "EXO_SWEEP_INTERVAL": "0.5"})
    try:
        m = stack.manager(NS, max_countdown=1)
        name = uid("late")
        run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={}))
        started = time.time()
        run_id = run(m.trigger(name, start_delay=2500))["run_id"]
        assert [s["status"] for s in run(m.list_states(run_id))] == ["CREATED"]  # in the ledger, not the broker
        assert run(m.wait(run_id, timeout=30))["status"] == "SUCCESS"
        state = run(m.list_states(run_id))[0]
        assert started + 2.5 <= epoch(state["updated_at"]) < started + 2.5 + 5
        assert "released 1 due state(s)" in beat.text()
    finally:
        beat.stop()
