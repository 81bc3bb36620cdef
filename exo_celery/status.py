"""State and run statuses, and the one table of allowed state transitions."""

from __future__ import annotations

from enum import Enum


class StateStatus(str, Enum):
    """Where one state of a run stands (the names Exosphere uses)."""

    CREATED = "CREATED"  # in the ledger, not yet due or not yet sent
    QUEUED = "QUEUED"  # sent to Celery, or being executed
    EXECUTED = "EXECUTED"  # outputs recorded, children not yet created
    SUCCESS = "SUCCESS"
    ERRORED = "ERRORED"
    NEXT_CREATED_ERROR = "NEXT_CREATED_ERROR"
    PRUNED = "PRUNED"
    RETRY_CREATED = "RETRY_CREATED"
    CANCELLED = "CANCELLED"


class RunStatus(str, Enum):
    """Where a run stands, derived from its states."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


S = StateStatus

ACTIVE_STATES = frozenset({S.CREATED, S.QUEUED, S.EXECUTED})
TERMINAL_STATES = frozenset(set(S) - ACTIVE_STATES)
# Terminal statuses that make a run FAILED and block an ALL_SUCCESS unite.
FAILED_STATES = frozenset({S.ERRORED, S.NEXT_CREATED_ERROR})
TERMINAL_RUNS = frozenset({RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED})

# Every status change the ledger may make; anything else is a bug. Each ledger statement that changes a
# status declares its move in `ledger/moves.py`, checked against this table (tests/unit/test_status_moves.py).
# QUEUED -> QUEUED is a requeue due soon (sent again with a countdown). EXECUTED is Exosphere's status
# between outputs and children; here both commit in one transaction, so no state is ever EXECUTED.
TRANSITIONS: dict[StateStatus, frozenset[StateStatus]] = {
    S.CREATED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset(
        {S.CREATED, S.QUEUED, S.SUCCESS, S.ERRORED, S.NEXT_CREATED_ERROR, S.PRUNED, S.RETRY_CREATED, S.CANCELLED}
    ),
    S.EXECUTED: frozenset(),
    S.ERRORED: frozenset({S.RETRY_CREATED}),  # manual retry
    S.NEXT_CREATED_ERROR: frozenset({S.RETRY_CREATED}),
    S.SUCCESS: frozenset(),
    S.PRUNED: frozenset(),
    S.RETRY_CREATED: frozenset(),
    S.CANCELLED: frozenset({S.RETRY_CREATED}),
}


def can_transition(old: StateStatus, new: StateStatus) -> bool:
    """True when the ledger may move a state from `old` to `new`."""
    return new in TRANSITIONS[old]
