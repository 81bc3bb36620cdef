"""Every status change the ledger makes, declared once and checked against `status.TRANSITIONS`.

A statement that changes a state's status takes its expected statuses (the
compare-and-set's WHERE) and its new one from a `Move` declared here; declaring
a move the table does not allow fails at import. `tests/unit/test_status_moves.py`
checks that the moves cover the table exactly and that no ledger statement sets
a status any other way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..status import TRANSITIONS, StateStatus

S = StateStatus


@dataclass(frozen=True)
class Move:
    """A status change: from any of `sources` to one of `targets`."""

    name: str
    sources: frozenset[StateStatus]
    targets: frozenset[StateStatus]

    @property
    def source_values(self) -> list[str]:
        """The expected statuses, as the ledger stores them (sorted: one statement text)."""
        return sorted(s.value for s in self.sources)

    @property
    def target(self) -> str:
        """The one new status of a move that has one, as the ledger stores it."""
        (only,) = self.targets
        return only.value


MOVES: dict[str, Move] = {}


def declare(name: str, sources: set[StateStatus], targets: set[StateStatus]) -> Move:
    """Register a move; every (source, target) pair must be in `status.TRANSITIONS`."""
    wrong = sorted(f"{a.value}->{b.value}" for a in sources for b in targets if b not in TRANSITIONS[a])
    if wrong:
        raise AssertionError(f"move {name!r} is not in status.TRANSITIONS: {', '.join(wrong)}")
    move = Move(name, frozenset(sources), frozenset(targets))
    MOVES[name] = move
    return move


RELEASE = declare("release", {S.CREATED}, {S.QUEUED})
"""Beat sends a CREATED state that is due soon."""

COMPLETE = declare(
    "complete",
    {S.QUEUED},
    {S.SUCCESS, S.NEXT_CREATED_ERROR, S.ERRORED, S.PRUNED, S.RETRY_CREATED, S.QUEUED, S.CREATED},
)
"""An execution is recorded (`plan.plan_outcome` picks the target; a requeue goes back to QUEUED or CREATED)."""

CANCEL_WAITING = declare("cancel", {S.CREATED, S.QUEUED}, {S.CANCELLED})
"""A cancelled run's waiting states, a claim that finds its run cancelled, and states a completion created
in a run cancelled meanwhile."""

MANUAL_RETRY = declare("manual retry", {S.ERRORED, S.NEXT_CREATED_ERROR, S.CANCELLED}, {S.RETRY_CREATED})
"""An operator retries a failed or cancelled state."""
