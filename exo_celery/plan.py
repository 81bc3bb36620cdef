"""The outcome planner: a state, its graph and how its execution ended in; what must change out. No I/O.

`plan_outcome` decides everything a completion changes: the state's own
status and columns, its retry and when it is due, the children and fan-out
outputs it creates, the scopes it opens. `scope_move` and `run_move` say how
the barrier and run counters move (the ledger calls them barrier by barrier,
since a barrier firing in the same transaction adds states to later ones), and
`plan_fired` builds a barrier's state once its scope emptied. The ledger reads
what these functions ask for, applies what they return, and decides nothing.

The one due-time rule (`status_for_due`) and the one retry rule (`retry_due`,
`retry_state`) live here too; the client and the operator actions use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .engine import (
    CompiledGraph,
    InputRules,
    NewState,
    Planned,
    ScopeOpen,
    Source,
    lineage_refs,
    new_id,
    plan_barrier_state,
    plan_success,
)
from .errors import PlanError
from .graph import RetryPolicyModel
from .outcomes import Dispatch, Outcome, StateRow, dispatch_of
from .status import StateStatus
from .topology import Barrier, Topology

S = StateStatus
Row = StateRow

MAX_DELIVERIES = 20  # a state whose worker died this many times in a row is ERRORED, not re-sent forever


# -- the due-time and retry rules ---------------------------------------------------------------
def status_for_due(due_at: float, now: float, max_countdown: float) -> StateStatus:
    """QUEUED (sent now, with a countdown) when due soon enough; else CREATED (beat releases it)."""
    return S.QUEUED if due_at - now <= max_countdown else S.CREATED


def retry_due(policy: RetryPolicyModel, retry_count: int, retryable: bool, now: float) -> float | None:
    """When the retry of a failed execution is due, or None when it gets none (the state is ERRORED).

    Retry number `retry_count + 1` is due `policy.compute_delay(retry_count + 1)` ms from `now`,
    while `retry_count < max_retries` and the error is retryable.
    """
    if not retryable or retry_count >= policy.max_retries:
        return None
    return now + policy.compute_delay(retry_count + 1) / 1000.0


def retry_state(row: Row, status: StateStatus) -> NewState:
    """The retry of a state: the same node, inputs, lineage and scopes, `retry_count + 1`."""
    return NewState(
        new_id(),
        row["identifier"],
        row["node_name"],
        row["namespace"],
        row["inputs"],
        row["parents"],
        row["scopes"],
        row["branch"],
        status,
        retry_of=row["id"],
        retry_count=row["retry_count"] + 1,
    )


def text(value: str | None) -> str | None:
    """Text the ledger can store: PostgreSQL text holds no NUL, and UTF-8 no lone surrogate (both escaped)."""
    return None if value is None else value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def source_of(row: Row) -> Source:
    """The facts of a state row that its children and barrier states inherit."""
    return Source(
        row["id"],
        row["run_id"],
        row["identifier"],
        row["parents"] or {},
        row["scopes"] or {},
        row["branch"] or "",
        row["execution_id"] or row["id"],
    )


# -- a completion's plan ------------------------------------------------------------------------
@dataclass
class Reads:
    """What planning a success reads from the ledger: ancestors' outputs (by state id) and the store."""

    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    store: dict[str, str] = field(default_factory=dict)


@dataclass
class OutcomePlan:
    """Everything an outcome changes, for the ledger to apply in one transaction."""

    status: StateStatus
    values: dict[str, Any]  # the state's columns to set in its compare-and-set
    created_due: float  # when `created` are due
    created: Planned = field(default_factory=lambda: Planned.of([]))  # states that will run (counted in scopes, run)
    finished: Planned = field(default_factory=lambda: Planned.of([]))  # fan-out outputs 1..n-1, inserted SUCCESS
    opens: list[ScopeOpen] = field(default_factory=list)
    store_writes: dict[str, str] = field(default_factory=dict)  # committed with a success
    requeue: Dispatch | None = None  # a requeued state due soon, sent again with a countdown
    leaving: bool = True  # the state leaves its scopes (it is terminal: all but a requeue)
    failed: int = 0  # 1 when the state ends ERRORED or NEXT_CREATED_ERROR
    pruned: int = 0

    @property
    def no_other_rows(self) -> bool:
        """True when the plan touches no row besides the state's own and its counters."""
        return not (self.created or self.finished or self.opens or self.store_writes)


def reads_needed(graph: CompiledGraph, row: Row, outcome: Outcome) -> tuple[list[str], bool]:
    """The ancestors (state ids) whose outputs planning `outcome` reads, and whether it reads the store."""
    if outcome.kind != "success":
        return [], False
    topo = graph.topology
    needed, reads_store = lineage_refs(topo, topo.direct_children(row["identifier"]))
    return [row["parents"][i] for i in needed if i in row["parents"]], reads_store


def plan_outcome(
    graph: CompiledGraph,
    row: Row,
    outcome: Outcome,
    now: float,
    reads: Reads,
    *,
    max_countdown: float,
    rules: InputRules,
) -> OutcomePlan:
    """What `outcome` (success, error, prune or requeue) of the state `row` changes, as of `now`."""
    values: dict[str, Any] = {"lease_token": None, "lease_until": None, "updated_at": now}
    if outcome.kind == "success":
        return _plan_success(graph, row, outcome, now, reads, rules, values)
    if outcome.kind == "requeue":
        due = now + outcome.delay
        status = status_for_due(due, now, max_countdown)
        values.update(status=status.value, due_at=due, dispatched_at=now, attempts=0)
        requeue = dispatch_of({**row, "due_at": due}) if status == S.QUEUED else None
        return OutcomePlan(status, values, now, requeue=requeue, leaving=False)
    if outcome.kind == "prune":
        values.update(status=S.PRUNED.value, data=outcome.data or {})
        return OutcomePlan(S.PRUNED, values, now, pruned=1)
    values["error"] = text(outcome.error)
    retry_at = retry_due(graph.template.retry_policy, row["retry_count"], outcome.retryable, now)
    if retry_at is None:
        values["status"] = S.ERRORED.value
        return OutcomePlan(S.ERRORED, values, now, failed=1)
    values["status"] = S.RETRY_CREATED.value
    retry = retry_state(row, status_for_due(retry_at, now, max_countdown))
    return OutcomePlan(S.RETRY_CREATED, values, retry_at, created=Planned.of([retry]))


def _plan_success(
    graph: CompiledGraph,
    row: Row,
    outcome: Outcome,
    now: float,
    reads: Reads,
    rules: InputRules,
    values: dict[str, Any],
) -> OutcomePlan:
    values["outputs"] = outcome.outputs[0] if outcome.outputs else None
    writes = dict(outcome.store_writes)
    try:
        store_now = {**reads.store, **writes}
        planned = plan_success(
            graph.topology,
            graph.namespace_of,
            source_of(row),
            outcome.outputs,
            reads.outputs,
            store_now,
            rules,
            state_inputs=row["inputs"],
        )
    except PlanError as exc:
        values.update(status=S.NEXT_CREATED_ERROR.value, error=text(str(exc)))
        return OutcomePlan(S.NEXT_CREATED_ERROR, values, now, store_writes=writes, failed=1)
    values["status"] = S.SUCCESS.value
    return OutcomePlan(
        S.SUCCESS,
        values,
        now,
        created=planned.children,
        finished=planned.output_states,
        opens=planned.opens,
        store_writes=writes,
    )


# -- counters -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScopeMove:
    """How one scope's counters move: outstanding states by `delta`, and its failed and pruned counts."""

    scope: str
    delta: int
    failed: int
    pruned: int


def _in_scope(barrier: Barrier, scope: str) -> Callable[[str, dict[str, str]], bool]:
    return lambda identifier, scopes: identifier in barrier.region and scopes.get(barrier.node) == scope


def scope_move(
    plan: OutcomePlan, barrier: Barrier, scope: str, fired: Iterable[NewState], fired_errors: Iterable[NewState]
) -> ScopeMove | None:
    """The move of the state's `scope` of `barrier`: +1 per new state of the scope (created by the plan, or
    `fired` so far), -1 for the state leaving it; None when nothing changes."""
    inside = _in_scope(barrier, scope)
    born = plan.created.count_where(inside) + sum(1 for s in fired if inside(s.identifier, s.scopes))
    delta = born - (1 if plan.leaving else 0)
    failed = plan.failed + sum(1 for s in fired_errors if inside(s.identifier, s.scopes))
    if delta == 0 and not failed and not plan.pruned:
        return None
    return ScopeMove(scope, delta, failed, plan.pruned)


def opened_or_closed(before: int, after: int) -> int:
    """+1 when a scope's count leaves zero, -1 when it reaches zero, else 0 (what the run counts of it)."""
    return int(before <= 0 < after) - int(after <= 0 < before)


def run_move(
    plan: OutcomePlan, in_scopes: bool, fired: list[NewState], fired_errors: list[NewState], open_scopes: int
) -> tuple[int, int]:
    """(delta, failed) of the run's counters. The run counts its states outside every barrier's region,
    plus one per open scope: a state inside a region moves only its scopes, never the run's hot row."""
    created_outside = plan.created.count_where(lambda _, scopes: not scopes)
    delta = created_outside + sum(1 for s in fired if not s.scopes) + open_scopes
    if plan.leaving and not in_scopes:
        delta -= 1
    return delta, plan.failed + len(fired_errors)


# -- barrier states -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GatherNeeds:
    """What building a barrier's state reads: the nodes whose outputs it gathers, the region nodes among
    them, the opener's ancestors it reads one by one, and whether it reads the store."""

    gather_ids: list[str]
    region_ids: list[str]
    lineage: list[str]
    reads_store: bool


def gather_needs(topo: Topology, barrier: Barrier, opener: Source) -> GatherNeeds:
    """The reads `plan_fired` needs for `barrier`, opened by `opener`."""
    refs, reads_store = lineage_refs(topo, [barrier.node])
    gather_ids = sorted(refs & (barrier.region | {barrier.over}))
    lineage = refs & set(opener.parents) - set(gather_ids)
    return GatherNeeds(
        gather_ids,
        [i for i in gather_ids if i != barrier.over],
        [opener.parents[i] for i in lineage],
        reads_store,
    )


def plan_fired(
    graph: CompiledGraph,
    barrier: Barrier,
    opener: Source,
    scope: str,
    gathered: dict[str, list[tuple[str, dict[str, Any]]]],
    known: dict[str, dict[str, Any]],
    store: dict[str, str],
    rules: InputRules,
) -> tuple[NewState, str | None]:
    """The state of a barrier whose scope emptied, and the error it is created ERRORED with (or None)."""
    topo = graph.topology
    try:
        state = plan_barrier_state(topo, graph.namespace_of, barrier, opener, scope, gathered, known, store, rules)
        return state, None
    except PlanError as exc:
        spec = topo.nodes[barrier.node]
        errored = NewState(
            new_id(),
            barrier.node,
            spec.node_name,
            graph.namespace_of(barrier.node),
            {},
            dict(opener.parents),
            {},
            opener.branch,
            S.ERRORED,
            fingerprint=scope,
        )
        return errored, f"inputs could not be resolved: {exc}"
