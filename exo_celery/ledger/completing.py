"""Completing: record how an execution ended by applying its plan (`plan.plan_outcome`) in one transaction.

The state's compare-and-set (`moves.COMPLETE`), its store writes, the states it
creates, its barriers (`barriers.Barriers`) and the run's counters commit
together, or nothing does: a duplicate delivery or a lost lease changes nothing.
On PostgreSQL the shapes that are one statement (a leaf inside one open scope, a
leaf outside every region, a requeue, a state outside every region creating a few
states: a hop) take no transaction; the most frequent (a branch, a hop, an ending
leaf) run on psycopg directly (`direct.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, update

from ..engine import CompiledGraph
from ..outcomes import Completion, Created, Dispatch, Outcome, StateRow
from ..plan import OutcomePlan, Reads, plan_outcome, reads_needed, run_move
from ..status import RunStatus, StateStatus
from .access import LedgerAccess
from .barriers import Barriers, Fired
from .finish import Finish, NotOurs
from .moves import CANCEL_WAITING
from .repo import outputs_of
from .rows import insert_states, read_store, state_values, write_store, written
from .store_writes import record_store_writes
from .tables import states

# A completion inserting more rows than this (a wide fan-out: 20,000 rows for 10,000 branches) takes
# its state's row lock first, so that no lease can expire under it (see `_apply`).
LOCK_FIRST_ROWS = 64


class Completions:
    """Recording executions."""

    def __init__(self, access: LedgerAccess, max_countdown: float, max_input_bytes: int) -> None:
        self.access = access
        self.max_countdown = max_countdown
        self.max_input_bytes = max_input_bytes  # rendered inputs of a new state (EXO_MAX_INPUT_BYTES)
        self.barriers = Barriers(access, max_input_bytes)

    def complete(self, graph: CompiledGraph, row: StateRow, token: str, outcome: Outcome) -> Completion:
        """Record how an execution ended and everything it causes; says what to publish and log."""
        try:
            return self._complete(graph, row, token, outcome)
        except NotOurs:
            return Completion(None, [], [])

    def _reads(self, run_id: str, ancestors: list[str], reads_store: bool) -> Reads:
        """What planning the children reads: ancestors' outputs (never change once written) and the store."""
        if not ancestors and not reads_store:
            return Reads()
        with self.access.autocommit() as conn:
            return Reads(outputs_of(conn, ancestors), read_store(conn, run_id) if reads_store else {})

    def _complete(self, graph: CompiledGraph, row: StateRow, token: str, outcome: Outcome) -> Completion:
        now = self.access.now()
        ancestors, reads_store = reads_needed(graph, row, outcome)
        reads = self._reads(row["run_id"], ancestors, reads_store)
        rules = graph.input_rules(self.max_input_bytes)
        plan = plan_outcome(graph, row, outcome, now, reads, max_countdown=self.max_countdown, rules=rules)
        compare_and_set = {"p_id": row["id"], "p_token": token, **plan.values}
        if self._leaf_in_open_scope(row, plan, compare_and_set) or self._ends_alone(row, plan, compare_and_set):
            return Completion(plan.status.value, [], [])
        if self._creates_outside_regions(row, plan):
            return self._create_alone(row, plan, compare_and_set, now)
        return self._apply(graph, row, plan, compare_and_set, now)

    def _leaf_in_open_scope(self, row: StateRow, plan: OutcomePlan, compare_and_set: dict[str, Any]) -> bool:
        """PostgreSQL: a leaf inside one region (a fan-out branch that ends) is one autocommitted statement,
        unless it is the region's last state and the barrier must fire (the transaction of `_apply`)."""
        if not (self.access.postgres and plan.leaving and plan.no_other_rows):
            return False
        if plan.failed or len(row["scopes"]) != 1:
            return False
        alone = Finish(compare_and_set)  # neither use changes the dict
        return alone.in_open_scope(self.access, next(iter(row["scopes"].values())), plan.pruned)

    def _ends_alone(self, row: StateRow, plan: OutcomePlan, compare_and_set: dict[str, Any]) -> bool:
        """PostgreSQL: a state outside every region that ends creating nothing (a one-node run, a chain's
        last hop) is one autocommitted statement: its compare-and-set and the run's move, which ends the
        run and notifies its waiters. A requeue (the run does not move) takes `_apply`."""
        if not (self.access.postgres and plan.no_other_rows and not row["scopes"]):
            return False
        move = _outside_regions_move(row, plan)
        if not (move["p_delta"] or move["p_failed"]):
            return False
        Finish(compare_and_set).moving_run(self.access, move)
        return True

    def _creates_outside_regions(self, row: StateRow, plan: OutcomePlan) -> bool:
        """PostgreSQL: a completion that creates a few states and touches no barrier and no store (a hop of
        a chain) is one autocommitted statement (`statements.finish_creating`)."""
        if not (self.access.postgres and (plan.created or plan.finished)):
            return False
        return not (row["scopes"] or plan.opens or plan.store_writes) and _rows_inserted(plan) <= LOCK_FIRST_ROWS

    def _create_alone(
        self, row: StateRow, plan: OutcomePlan, compare_and_set: dict[str, Any], now: float
    ) -> Completion:
        new_rows = [state_values(s, row, now, now) for s in plan.finished]
        new_rows += [state_values(s, row, now, plan.created_due) for s in plan.created]
        moved = Finish(compare_and_set).creating(self.access, new_rows, _outside_regions_move(row, plan))
        created = [] if moved["status"] == RunStatus.CANCELLED.value else [written(s) for s in plan.created]
        return Completion(plan.status.value, _dispatches(row, created, plan.created_due), created)

    def _apply(
        self, graph: CompiledGraph, row: StateRow, plan: OutcomePlan, compare_and_set: dict[str, Any], now: float
    ) -> Completion:
        postgres = self.access.postgres
        # A change that is one statement (no new rows, no store writes, no scope that could fire:
        # a requeue; a leaf outside every region took `_ends_alone`) needs no transaction on PostgreSQL.
        single = postgres and plan.no_other_rows and (not row["scopes"] or not plan.leaving)
        dispatches: list[Dispatch] = [plan.requeue] if plan.requeue is not None else []
        with self.access.autocommit() if single else self.access.engine.begin() as conn:
            finish = Finish(compare_and_set)
            # The compare-and-set first (it locks the state's row until commit), rather than merged
            # into the last counter move: a wide fan-out's inserts can outlast the lease, and a row
            # locked by a live completion is skipped by `recover()`, by claims and by lease renewals
            # (PostgreSQL `SKIP LOCKED`), so it is neither re-sent as lost nor waited on.
            if not postgres or plan.store_writes or _rows_inserted(plan) > LOCK_FIRST_ROWS:
                finish.flush(conn)
            if plan.store_writes:
                write_store(conn, row["run_id"], plan.store_writes)
                record_store_writes(conn, row["run_id"], row["id"], plan.store_writes, now)
            insert_states(conn, plan.finished, row, now, now)
            inserted = insert_states(conn, plan.created, row, now, plan.created_due)
            fired = self.barriers.apply(conn, graph, row, plan, finish)
            created, fired_states = _move_run(conn, row, plan, inserted, fired, finish, now)
            finish.flush(conn)
            dispatches += _dispatches(row, created, plan.created_due) + _dispatches(row, fired_states, now)
        return Completion(plan.status.value, dispatches, [*created, *fired_states, *map(written, fired.errors)])


def _dispatches(row: StateRow, new: Iterable[Created], due: float) -> list[Dispatch]:
    """The messages to send for the QUEUED ones of `row`'s new states, due at `due`."""
    return [
        Dispatch(s.id, row["run_id"], s.namespace, s.node_name, row["graph_name"], s.identifier, due)
        for s in new
        if s.status == StateStatus.QUEUED.value
    ]


def _outside_regions_move(row: StateRow, plan: OutcomePlan) -> dict[str, Any]:
    """MOVE_RUN's parameters for a state outside every region whose completion fires no barrier."""
    delta, failed = run_move(plan, False, [], [], 0)
    return {"p_run": row["run_id"], "p_delta": delta, "p_failed": failed}


def _rows_inserted(plan: OutcomePlan) -> int:
    return len(plan.created) + len(plan.finished)


def _move_run(
    conn: Connection, row: StateRow, plan: OutcomePlan, created: list[Created], fired: Fired, finish: Finish, now: float
) -> tuple[list[Created], list[Created]]:
    """Move the run's counters; the states created and fired that stay (none if the run was cancelled)."""
    fired_states = [written(s) for s in fired.states]
    delta, failed = run_move(plan, bool(row["scopes"]), fired.states, fired.errors, fired.open_scopes)
    if not (delta or failed or created or fired_states):
        return created, fired_states
    # Locking the run row here orders this commit against a concurrent cancel: either
    # cancel sees these new states, or this sees the run CANCELLED and cancels them.
    moved = finish.move(conn, "run", {"p_run": row["run_id"], "p_delta": delta, "p_failed": failed})
    if moved is not None and moved.status == RunStatus.CANCELLED.value:
        new_ids = [x.id for x in (*created, *fired_states)]
        conn.execute(
            update(states)
            .where(states.c.id.in_(new_ids), states.c.status.in_(CANCEL_WAITING.source_values))
            .values(status=CANCEL_WAITING.target, updated_at=now)
        )
        return [], []
    return created, fired_states
