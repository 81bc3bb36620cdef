"""Operator actions: a manual retry of a failed or cancelled state, and cancelling a run."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from ..engine import Planned
from ..errors import NotFoundError, StateError
from ..outcomes import Dispatch, dispatch_of, state_row
from ..plan import opened_or_closed, retry_state
from ..status import FAILED_STATES, TERMINAL_RUNS, RunStatus, StateStatus
from .access import LedgerAccess
from .clock import ledger_now
from .moves import CANCEL_WAITING, MANUAL_RETRY
from .notify import notify_run_ended
from .rows import insert_states
from .statements import MOVE_SCOPE
from .tables import runs, states

S = StateStatus


class OperatorActions:
    """What an operator does to runs and states (through the client, the CLI or the server)."""

    def __init__(self, access: LedgerAccess) -> None:
        self.access = access

    def manual_retry(self, state_id: str) -> tuple[dict[str, Any], list[Dispatch]]:
        """Retry an ERRORED (or NEXT_CREATED_ERROR / CANCELLED) state; repeating it returns the same retry."""
        now = self.access.now()
        with self.access.engine.begin() as conn:
            found = conn.execute(select(states).where(states.c.id == state_id)).mappings().first()
            if found is None:
                raise NotFoundError(f"state {state_id!r} does not exist")
            row = state_row(found)
            existing = conn.execute(select(states).where(states.c.retry_of == state_id)).mappings().first()
            if existing is not None:
                return dict(existing), []
            if S(row["status"]) not in MANUAL_RETRY.sources:
                raise StateError(
                    f"state {state_id!r} is {row['status']}; only ERRORED, NEXT_CREATED_ERROR or CANCELLED "
                    "states can be retried"
                )
            run = conn.execute(select(runs).where(runs.c.id == row["run_id"])).mappings().first()
            if run is None or run["status"] == RunStatus.CANCELLED.value:
                raise StateError(f"run {row['run_id']!r} was cancelled; its states cannot be retried")
            moved = conn.execute(
                update(states)
                .where(states.c.id == state_id, states.c.status == row["status"])
                .values(status=MANUAL_RETRY.target, updated_at=now)
            ).rowcount
            if not moved:
                raise StateError(f"state {state_id!r} changed while retrying it; try again")
            retry = retry_state(row, S.QUEUED)
            insert_states(conn, Planned.of([retry]), row, now, now)
            _count_retry(conn, row, was_failed=S(row["status"]) in FAILED_STATES)
            created = dict(conn.execute(select(states).where(states.c.id == retry.id)).mappings().one())
        return created, [dispatch_of(created)]

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run: its waiting and executing states become CANCELLED (executing ones lose their lease,
        which their worker notices and stops the node; whatever they return is not recorded)."""
        now = ledger_now()
        with self.access.engine.begin() as conn:
            run = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            if run is None:
                raise NotFoundError(f"run {run_id!r} does not exist")
            if RunStatus(run["status"]) in TERMINAL_RUNS:
                return dict(run)
            # The run row first: a completion committing meanwhile either ran before this (and its
            # children are visible to the next statement) or waits and then cancels its own children.
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=RunStatus.CANCELLED.value, outstanding=0, finished_at=now)
            )
            if self.access.postgres:
                conn.execute(select(notify_run_ended(run_id)))  # the run's waiters wake on commit
            pending = (
                select(states.c.id)
                .where(states.c.run_id == run_id, states.c.status.in_(CANCEL_WAITING.source_values))
                .with_for_update(skip_locked=True)  # a state being completed right now cancels its own children
            )
            conn.execute(
                update(states)
                .where(states.c.id.in_(pending.scalar_subquery()))
                .values(status=CANCEL_WAITING.target, lease_token=None, lease_until=None, updated_at=now)
            )
            return dict(conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one())


def _count_retry(conn: Connection, row: Any, was_failed: bool) -> None:
    """The retry counts in the state's scopes and run again; a failed state no longer counts as failed."""
    run_delta = 0 if row["scopes"] else 1
    for sid in row["scopes"].values():
        now_outstanding = conn.execute(
            MOVE_SCOPE, {"p_scope": sid, "p_delta": 1, "p_failed": -1 if was_failed else 0, "p_pruned": 0}
        ).scalar()
        if now_outstanding is not None:
            run_delta += opened_or_closed(now_outstanding - 1, now_outstanding)
    conn.execute(
        update(runs)
        .where(runs.c.id == row["run_id"])
        .values(
            outstanding=runs.c.outstanding + run_delta,
            failed=runs.c.failed - (1 if was_failed else 0),
            status=RunStatus.RUNNING.value,
            finished_at=None,
        )
    )
