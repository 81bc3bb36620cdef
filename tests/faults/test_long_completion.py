"""A completion that outlasts its lease (issue 13 item 11): not re-sent as lost, and nothing waits on it.

At a 2 s lease, a 10,000-branch fan-out's root took longer than its lease to insert its 20,000 rows:
beat's `recover()` saw the lease expired and re-sent the root, and each copy's claim waited on the
row lock of that completion, holding a pool process for 45-118 s. Here a 200-branch fan-out's
completion is slowed (its inserts pause inside the transaction) past a 1 s lease: `recover()` must
skip it and a copy's claim must return at once, and the completion must still commit (on PostgreSQL;
on SQLite, the embedded ledger, both wait for the one write lock and then find the state finished).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from exo_celery.engine import new_id
from exo_celery.ledger import completing
from exo_celery.ledger.db import get_engine
from exo_celery.ledger.tables import states
from exo_celery.ledger.transitions import Outcome, Transitions
from exo_celery.outcomes import Completion

from ..support import Stack
from ..test_transitions import fan_out_and_unite_run
from .harness import wait_until

WIDTH = 200  # rows past `completing.LOCK_FIRST_ROWS`
LEASE = 1.0
PAUSE = 3 * LEASE  # how long the completion's inserts pause inside its transaction


def test_a_completion_longer_than_its_lease_is_neither_resent_nor_waited_on(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = stack.settings().ledger_url
    _, graph, run_id = fan_out_and_unite_run(stack, "long")
    t = Transitions(url, lease_seconds=LEASE, max_countdown=300, worker=True)
    engine = get_engine(url)
    with engine.connect() as conn:
        root_id = conn.execute(select_root(run_id)).scalar_one()
    token = new_id()
    verdict, row = t.claim(root_id, token)
    assert verdict == "claimed" and row is not None

    inserting = threading.Event()
    real_insert = completing.insert_states

    def slow_insert(conn: Any, *args: Any) -> Any:
        written = real_insert(conn, *args)
        inserting.set()
        time.sleep(PAUSE / 2)  # a slow insert inside the transaction, not a wait in the test
        return written

    monkeypatch.setattr(completing, "insert_states", slow_insert)
    done: list[Completion] = []
    fanned = Outcome("success", outputs=[{"item": f"i{k:04d}"} for k in range(WIDTH)])
    completer = threading.Thread(target=lambda: done.append(t.complete(graph, row, token, fanned)))
    completer.start()
    assert inserting.wait(30)

    # On the ledger's clock (a read of the row would wait for the completion on SQLite).
    wait_until(lambda: t.now() > row["lease_until"] + 0.2, timeout=10, what="the root's lease to expire")
    assert completer.is_alive(), "the completion ended before its lease expired: slow it more"
    started = time.monotonic()
    resent = t.recover()
    recover_seconds = time.monotonic() - started
    assert root_id not in {d.state_id for d in resent}, "recover() re-sent a state whose completion is in progress"
    busy = completer.is_alive()
    started = time.monotonic()
    copy = t.claim(root_id, new_id())
    claim_seconds = time.monotonic() - started
    assert copy == ("skip", None)
    if t.postgres:  # row locks, skipped: neither waited for the completion
        assert busy, "the completion ended before recover() and the claim were tried: slow it more"
        assert recover_seconds < LEASE and claim_seconds < LEASE, (recover_seconds, claim_seconds)
    # SQLite: one write lock for the whole ledger, which the completion took first (BEGIN IMMEDIATE) and
    # its compare-and-set with it: recover() waited for the commit, then found the state finished.
    completer.join(60)
    assert done and done[0].status == "SUCCESS"
    assert len(done[0].dispatches) == WIDTH
    with engine.connect() as conn:
        n = conn.execute(count_of(run_id, "up")).scalar_one()
    assert n == WIDTH


def select_root(run_id: str) -> Any:
    return select(states.c.id).where(states.c.run_id == run_id, states.c.identifier == "split")


def count_of(run_id: str, identifier: str) -> Any:
    return select(func.count()).where(states.c.run_id == run_id, states.c.identifier == identifier)
