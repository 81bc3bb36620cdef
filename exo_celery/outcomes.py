"""The values that cross layers: how an execution ended, what to publish, what a completion did.

Plain dataclasses and `Literal`s, no I/O: the executor builds an `Outcome`, the
planner reads it, the ledger returns a `Completion` and `Dispatch`es, and the
task layer publishes those. Nothing here imports SQLAlchemy or Celery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypedDict, cast

OutcomeKind = Literal["success", "error", "prune", "requeue"]
"""How an execution ended: returned, raised, raised PruneSignal, raised ReQueueAfterSignal."""

ClaimVerdict = Literal["claimed", "early", "skip"]
"""What a claim found: the lease is ours, the message came before the state's due time, or nothing to do."""

CounterName = Literal["scope", "run"]
"""The two counters a completion moves: a barrier's scope, or the run."""

BarrierStrategy = Literal["ALL_SUCCESS", "ALL_DONE", "JOIN"]
"""When a barrier fires: a unite's two strategies, or an implicit join (all predecessors SUCCESS)."""


class StateRow(TypedDict):
    """A state's row as the ledger returns it (the columns of `exo_states`).

    A TypedDict, not a class: the row stays the dict the driver built, so typing it costs nothing
    on the hot path (issue 16, item 3)."""

    id: str
    run_id: str
    namespace: str
    graph_namespace: str
    graph_name: str
    graph_version: int
    identifier: str
    node_name: str
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    data: dict[str, Any] | None
    retry_count: int
    parents: dict[str, Any]
    scopes: dict[str, Any]
    branch: str
    execution_id: str | None
    fingerprint: str | None
    retry_of: str | None
    due_at: float
    lease_token: str | None
    lease_until: float | None
    dispatched_at: float | None
    started_at: float | None
    attempts: int
    created_at: float
    updated_at: float


def state_row(found: Mapping[Any, Any]) -> StateRow:
    """A row of `exo_states` read by the driver, as a `StateRow` (a copy, not a conversion)."""
    return cast(StateRow, dict(found))


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A state to publish to Celery (ids only; the rest is for routing and display)."""

    state_id: str
    run_id: str
    namespace: str
    node_name: str
    graph_name: str
    identifier: str
    due_at: float


@dataclass
class Outcome:
    """How one execution of a node ended, as the worker classified it."""

    kind: OutcomeKind
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    data: dict[str, Any] | None = None
    delay: float = 0.0  # requeue delay, seconds
    retryable: bool = True
    store_writes: dict[str, str] = field(default_factory=dict)


class Created(NamedTuple):
    """A state a completion wrote, as the worker publishes and logs it."""

    id: str
    identifier: str
    status: str
    node_name: str
    namespace: str


@dataclass(frozen=True)
class Completion:
    """What `complete` did: the state's new status (None if another delivery got there first),
    the states to publish, and every state it created."""

    status: str | None
    dispatches: list[Dispatch]
    created: list[Created]


def dispatch_of(row: Mapping[str, Any]) -> Dispatch:
    """The message to publish for a state row."""
    return Dispatch(
        row["id"],
        row["run_id"],
        row["namespace"],
        row["node_name"],
        row["graph_name"],
        row["identifier"],
        row["due_at"],
    )
