"""Scenario 4: duplicate delivery. Messages published twice, and redelivered after their worker died.

Every state transition is a compare-and-set and a claim takes a lease, so a duplicate or redelivered
message must change nothing: each node runs once per state (the Count-like `Work`/`Hold` nodes write one
line per execution: each item exactly once) and there is one unite state.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from exo_celery import GraphNodeModel, UnitesModel
from exo_celery.celery_app import make_app, publish
from exo_celery.ledger.transitions import Dispatch

from ..support import RABBITMQ_URL, Proc, Stack, check_rabbitmq, require, run, uid
from . import nodes as fault_nodes
from .harness import (
    FAST,
    Figures,
    Ledger,
    PrivateRedis,
    all_handled,
    beat_resent,
    check_fan_run,
    deliveries,
    effect_lines,
    fan_graph,
    scan_secrets,
    soak,
    start_workers,
    upsert,
    wait_until,
)

_DISPATCH = "SELECT id, run_id, namespace, node_name, graph_name, identifier, due_at FROM exo_states WHERE run_id = %s"


def _snapshot(ledger: Ledger, run_id: str) -> list[tuple]:
    return ledger.rows(
        "SELECT id, status, attempts, updated_at, outputs::text FROM exo_states WHERE run_id = %s ORDER BY id",
        (run_id,),
    )


def test_every_message_published_three_times(fstack: Stack, private_redis: PrivateRedis, figures: Figures) -> None:
    """Each state's message goes out three times while the run is live (two workers race for them), and
    twice more for every state once the run is over: each item runs once, one unite, nothing changes after."""
    width = soak(50)
    ns = uid("dup")
    ledger = Ledger(fstack.database_url or "")
    effects = fstack.home / "effects"
    upsert(fstack, ns, "fan", fan_graph(width, str(effects), ms=20))
    settings = fstack.settings()
    app = make_app(settings, main="fault-suite-duplicator")
    workers = start_workers(fstack, ns, 2)
    m = fstack.manager(ns)
    run_id = run(m.trigger("fan"))["run_id"]

    duplicated: set[str] = set()
    stop = threading.Event()

    def duplicate() -> None:
        """Publish the same Dispatch twice more for every state that appears (QUEUED or already running)."""
        own = Ledger(fstack.database_url or "")
        while not stop.is_set():
            rows = own.rows(_DISPATCH + " AND status = 'QUEUED'", (run_id,))
            fresh = [Dispatch(*r) for r in rows if r[0] not in duplicated]
            for _ in range(2):
                publish(app, settings, fresh)
            duplicated.update(d.state_id for d in fresh)
            time.sleep(0.02)
        own.close()

    thread = threading.Thread(target=duplicate, daemon=True)
    thread.start()
    status = ledger.wait_runs([run_id], timeout=60)[run_id]
    stop.set()
    thread.join(timeout=5)
    before = _snapshot(ledger, run_id)
    # Once the run is over: every state's message twice more, also through app.send_task with its id.
    late = [Dispatch(*r) for r in ledger.rows(_DISPATCH, (run_id,))]
    publish(app, settings, late)
    queue = f"{settings.queue_prefix}.{ns}"
    for d in late:
        app.send_task(f"{queue}.{d.node_name}", args=[d.state_id, d.run_id], queue=f"{queue}.{d.node_name}")
    executed = 1 + width + 1  # fan, the work states, gather
    sent = executed + 2 * len(duplicated) + 2 * len(late)  # originals, live duplicates, late ones (no beat here)
    wait_until(lambda: deliveries(workers)[0] >= sent, 30, "every duplicate delivered")
    wait_until(lambda: all_handled(workers), 30, "every delivered message handled")
    after = _snapshot(ledger, run_id)

    check = check_fan_run(ledger, run_id, width)
    lines = effect_lines(effects)
    received, claimed = deliveries(workers)
    figures.record(
        "4-duplicate-publish",
        runs=1,
        states=len(before),
        states_published_3_times_while_live=len(duplicated),
        states_published_again_after_the_run=len(late) * 2,
        messages_received=received,
        states_claimed=claimed,
        node_executions=sum(lines.values()),
        effects_duplicated=sum(c - 1 for c in lines.values()),
        effects_duplicated_in_ledger=check.duplicated,
        states_lost=check.lost,
        unite_states=check.unites,
        ledger_rows_changed_by_late_duplicates=sum(1 for a, b in zip(before, after, strict=True) if a != b),
    )
    assert status == "SUCCESS" and check.ok, check
    assert len(duplicated) >= width, "the work states were duplicated while queued"
    assert set(lines.values()) == {1} and len(lines) == width, "each item ran exactly once"
    assert claimed == executed, f"{claimed} claims for {executed} states"
    assert received == sent
    assert before == after, "a duplicate of a finished state changed the ledger"
    scan = scan_secrets(fstack, run_ids=[run_id], namespace=ns, redis_client=private_redis.client())
    assert not scan.found, f"the secret leaked into {scan.found}"


def _hold_graph(path: Path, n: int, seconds: float) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="FanOut", identifier="fan", inputs={"n": str(n)}, next_nodes=["hold"]),
        GraphNodeModel(
            node_name="Hold",
            identifier="hold",
            inputs={"item": "${{ fan.outputs.item }}", "path": str(path), "seconds": str(seconds)},
            next_nodes=["gather"],
        ),
        GraphNodeModel(
            node_name="Gather",
            identifier="gather",
            inputs={"values": "${{ hold.outputs.item }}"},
            unites=UnitesModel(identifier="fan"),
        ),
    ]


def _kill_while_holding(stack: Stack, ns: str, path: Path, a: Proc) -> tuple[str, int]:
    """Once worker A (concurrency 1, prefetching more) runs a Hold, SIGKILL it 0.2 s into the hold.

    Returns (run id, messages A had received: the running one and the prefetched ones)."""
    m = stack.manager(ns)
    run_id = run(m.trigger("hold"))["run_id"]
    wait_until(lambda: "identifier=hold status=RUNNING" in a.text(), 30, "a Hold running on worker A")
    time.sleep(0.2)
    held = a.text().count("] received")
    a.kill(signal.SIGKILL)
    a.popen.wait(timeout=10)
    assert len(effect_lines(path)) < 8, "killed mid-hold"
    return run_id, held


def test_redelivered_after_the_worker_died_on_redis(
    fstack: Stack, private_redis: PrivateRedis, figures: Figures
) -> None:
    """Redis keeps a dead worker's unacknowledged messages (for the visibility timeout): the sweep re-sends
    those states at once, and when Redis finally redelivers the originals, they change nothing."""
    n = 4
    ns = uid("redeliver")
    ledger = Ledger(fstack.database_url or "")
    path = fstack.home / "effects"
    upsert(fstack, ns, "hold", _hold_graph(path, n, 0.6))
    beat = fstack.start_beat()
    (a,) = start_workers(fstack, ns, 1, concurrency=1)
    run_id, held = _kill_while_holding(fstack, ns, path, a)
    unacked = private_redis.client().hlen("unacked")
    (b,) = start_workers(fstack, ns, 1, concurrency=2)
    status = ledger.wait_runs([run_id], timeout=60)[run_id]
    before = _snapshot(ledger, run_id)
    received_before = deliveries([b])[0]
    # What Redis does once the visibility timeout has passed: put the dead worker's messages back.
    with Connection(private_redis.url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=1000)
    wait_until(lambda: deliveries([b])[0] >= received_before + unacked, 30, "the old messages redelivered")
    wait_until(lambda: all_handled([b]), 30, "the redelivered messages handled")
    after = _snapshot(ledger, run_id)

    lines = effect_lines(path)
    gathers = ledger.value("SELECT count(*) FROM exo_states WHERE run_id = %s AND identifier = 'gather'", (run_id,))
    figures.record(
        "4-redelivery-redis",
        runs=1,
        worker_kills=1,
        messages_unacked_by_the_dead_worker=unacked,
        messages_redelivered_after_the_run=unacked,
        messages_resent_by_sweep=beat_resent([beat])[1],
        node_executions=sum(lines.values()),
        effects_duplicated=sum(c - 1 for c in lines.values()),
        unite_states=gathers,
        ledger_rows_changed_by_redelivery=sum(1 for x, y in zip(before, after, strict=True) if x != y),
    )
    assert status == "SUCCESS"
    assert held >= 2 and unacked >= 2, "the dead worker held a running and a prefetched message"
    assert set(lines.values()) == {1} and len(lines) == n, f"each item ran exactly once: {lines}"
    assert gathers == 1
    assert before == after, "a redelivered message changed the ledger"


@pytest.fixture
def rabbit_stack(fresh_pg: Stack) -> Iterator[Stack]:
    """A private ledger database with the shared RabbitMQ (its queues get this test's unique prefix)."""
    require("RabbitMQ", check_rabbitmq)
    fresh_pg.broker_url = RABBITMQ_URL
    fresh_pg.extra.update(FAST)
    yield fresh_pg
    for proc in fresh_pg.procs:
        proc.kill(signal.SIGKILL)


class RabbitTap:
    """A queue bound to the namespace's exchange and one to the event exchange: a copy of every message."""

    def __init__(self, prefix: str, ns: str) -> None:
        name = f"{prefix}.{ns}"
        self.conn = Connection(RABBITMQ_URL)
        self.queues = [
            Queue(f"{name}.tap", Exchange(name, type="direct"), routing_key=name, auto_delete=False),
            Queue(f"{name}.evtap", Exchange("celeryev", type="topic"), routing_key="#", auto_delete=False),
        ]
        self.names = [f"{name}.{node.__name__}" for node in fault_nodes.NODES]  # one queue per node
        for q in self.queues:
            q(self.conn.default_channel).declare()

    def drain(self) -> str:
        texts = []
        for q in self.queues:
            bound = q(self.conn.default_channel)
            while (message := bound.get(no_ack=True)) is not None:
                body = message.body
                texts.append(
                    f"{message.headers}\n{body.decode('utf-8', 'replace') if isinstance(body, bytes) else body}"
                )
        return "\n".join(texts)

    def close(self) -> None:
        channel = self.conn.default_channel
        for q in self.queues:
            q(channel).delete()
        for name in self.names:
            Queue(name, Exchange(name), routing_key=name)(channel).delete()
        self.conn.release()


def test_redelivered_after_the_worker_died_on_rabbitmq(rabbit_stack: Stack, figures: Figures) -> None:
    """RabbitMQ redelivers a dead consumer's unacknowledged messages at once, while the lease of the state
    that was running is still valid: that copy is dropped, the sweep re-sends the state once the lease
    expires, and every item still runs exactly once."""
    n = 8
    stack = rabbit_stack
    ns = uid("rabbit")
    tap = RabbitTap(stack.extra["EXO_QUEUE_PREFIX"], ns)
    try:
        ledger = Ledger(stack.database_url or "")
        path = stack.home / "effects"
        upsert(stack, ns, "hold", _hold_graph(path, n, 0.6))
        beat = stack.start_beat()
        a, b = start_workers(stack, ns, 2, concurrency=1)  # b consumes too: it gets the redeliveries at once
        run_id, held = _kill_while_holding(stack, ns, path, a)
        status = ledger.wait_runs([run_id], timeout=60)[run_id]
        lines = effect_lines(path)
        received, claimed = deliveries([b])
        gathers = ledger.value("SELECT count(*) FROM exo_states WHERE run_id = %s AND identifier = 'gather'", (run_id,))
        traffic = tap.drain()
        figures.record(
            "4-redelivery-rabbitmq",
            runs=1,
            worker_kills=1,
            messages_held_by_the_dead_worker=held,
            messages_received_by_the_survivor=received,
            states_claimed_by_the_survivor=claimed,
            messages_resent_by_sweep=beat_resent([beat])[1],
            node_executions=sum(lines.values()),
            effects_duplicated=sum(c - 1 for c in lines.values()),
            unite_states=gathers,
        )
        assert status == "SUCCESS"
        assert set(lines.values()) == {1} and len(lines) == n, f"each item ran exactly once: {lines}"
        assert gathers == 1
        scan = scan_secrets(stack, run_ids=[run_id], namespace=ns, tap_text=traffic)
        assert not scan.found, f"the secret leaked into {scan.found}"
    finally:
        tap.close()


def test_a_backlog_longer_than_the_lease_is_not_resent(fstack: Stack) -> None:
    """One worker (concurrency 1), 10 states of 0.45 s: a 4.5 s backlog, lease 3 s, and nothing lost.

    The sweep asks the broker what it still holds (issue 13, item 11): nothing is re-sent.
    """
    ns = uid("backlog")
    ledger = Ledger(fstack.database_url or "")
    upsert(fstack, ns, "fan", fan_graph(10, str(fstack.home / "effects"), ms=450))
    beat = fstack.start_beat()
    (w,) = start_workers(fstack, ns, 1, concurrency=1)
    run_id = run(fstack.manager(ns).trigger("fan"))["run_id"]
    assert ledger.wait_runs([run_id], timeout=60)[run_id] == "SUCCESS"
    received, claimed = deliveries([w])
    assert beat_resent([beat])[1] == 0, f"the sweep re-sent {beat_resent([beat])[1]} states that were not lost"
    assert received == claimed
