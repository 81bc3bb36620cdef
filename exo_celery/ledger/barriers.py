"""Barriers: the scopes of joins and unites, their counters, and the one state each creates when it empties.

A completion opens the scopes of the barriers that wait on its node, and moves
each scope it belongs to (`plan.scope_move`); the transaction that brings a
scope to zero fires its barrier (`engine.barrier_fires` says whether) and
inserts the barrier's state once: its fingerprint is unique, so a race lost is
an insert conflict, not a second state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, or_, select

from ..engine import CompiledGraph, NewState, ScopeOpen, barrier_fires
from ..outcomes import StateRow, state_row
from ..plan import OutcomePlan, gather_needs, opened_or_closed, plan_fired, scope_move, source_of
from ..status import StateStatus
from ..topology import Barrier
from .access import LedgerAccess
from .finish import Finish
from .repo import outputs_of
from .rows import insert_unique, read_store
from .tables import scopes, states

S = StateStatus


@dataclass
class Fired:
    """What a completion's barriers did: the states they created (to run, or ERRORED), and the change in
    the number of open scopes (the run counts each open scope once)."""

    states: list[NewState] = field(default_factory=list)
    errors: list[NewState] = field(default_factory=list)
    open_scopes: int = 0


class Barriers:
    """Opening, moving and firing the scopes a completion touches."""

    def __init__(self, access: LedgerAccess, max_input_bytes: int) -> None:
        self.access = access
        self.max_input_bytes = max_input_bytes

    def apply(self, conn: Connection, graph: CompiledGraph, row: StateRow, plan: OutcomePlan, finish: Finish) -> Fired:
        """Open the scopes `plan` opens and move the ones `row` is in, barrier by barrier in order."""
        topo = graph.topology
        ident = row["identifier"]
        fired = Fired()
        for name in topo.barrier_order:
            barrier = topo.barriers[name]
            if barrier.over == ident:
                for op in (o for o in plan.opens if o.barrier == name):
                    self._open(conn, graph, barrier, op, row, fired)
            elif ident in barrier.region and name in row["scopes"]:
                self._move(conn, graph, barrier, row, plan, finish, fired)
        return fired

    def _open(
        self, conn: Connection, graph: CompiledGraph, barrier: Barrier, op: ScopeOpen, row: StateRow, fired: Fired
    ) -> None:
        conn.execute(
            insert(scopes).values(
                id=op.id,
                run_id=row["run_id"],
                barrier=barrier.node,
                opener_id=op.opener_id,
                outstanding=op.outstanding,
                failed=0,
                pruned=0,
            )
        )
        if op.outstanding == 0:
            self._fire(conn, graph, barrier, op.id, op.opener_id, 0, 0, row, fired)
        else:
            fired.open_scopes += 1

    def _move(
        self,
        conn: Connection,
        graph: CompiledGraph,
        barrier: Barrier,
        row: StateRow,
        plan: OutcomePlan,
        finish: Finish,
        fired: Fired,
    ) -> None:
        sid = row["scopes"][barrier.node]
        move = scope_move(plan, barrier, sid, fired.states, fired.errors)
        if move is None:
            return
        params = {"p_scope": sid, "p_delta": move.delta, "p_failed": move.failed, "p_pruned": move.pruned}
        scope = finish.move(conn, "scope", params)
        if scope is None:
            return
        fired.open_scopes += opened_or_closed(scope.outstanding - move.delta, scope.outstanding)
        if scope.outstanding == 0 and move.delta < 0:
            self._fire(conn, graph, barrier, sid, scope.opener_id, scope.failed, scope.pruned, row, fired)

    def _fire(
        self,
        conn: Connection,
        graph: CompiledGraph,
        barrier: Barrier,
        sid: str,
        opener_id: str,
        failed: int,
        pruned: int,
        row: StateRow,
        fired: Fired,
    ) -> None:
        """Create the state of a barrier whose scope just emptied (once: the fingerprint is unique)."""
        if not barrier_fires(barrier, failed, pruned):
            return
        opener_row = conn.execute(select(states).where(states.c.id == opener_id)).mappings().first()
        if opener_row is None:
            return
        opener = source_of(state_row(opener_row))
        needs = gather_needs(graph.topology, barrier, opener)
        gathered = _gather(conn, barrier, row["run_id"], sid, needs.gather_ids, needs.region_ids, opener_row)
        known = outputs_of(conn, needs.lineage)
        store_now = read_store(conn, row["run_id"]) if needs.reads_store else {}
        rules = graph.input_rules(self.max_input_bytes)
        state, error = plan_fired(graph, barrier, opener, sid, gathered, known, store_now, rules)
        if insert_unique(conn, state, row, self.access.now(), error=error):
            (fired.states if error is None else fired.errors).append(state)


def _gather(
    conn: Connection,
    barrier: Barrier,
    run_id: str,
    sid: str,
    gather_ids: list[str],
    region_ids: list[str],
    opener_row: Any,
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The SUCCESS states (id, outputs) in the scope of each node the barrier's inputs gather, in fan-out order."""
    gathered: dict[str, list[tuple[str, dict[str, Any]]]] = {i: [] for i in gather_ids}
    if region_ids:
        q = (
            select(states.c.id, states.c.identifier, states.c.outputs)
            .where(
                states.c.run_id == run_id,
                states.c.identifier.in_(region_ids),
                states.c.status == S.SUCCESS.value,
                states.c.outputs.is_not(None),
                states.c.scopes[barrier.node].as_string() == sid,
            )
            .order_by(states.c.branch, states.c.created_at)
        )
        for sid_, ident_, out in conn.execute(q):
            gathered[ident_].append((sid_, out))
    if barrier.over in gathered and barrier.per_output:
        gathered[barrier.over] = [(opener_row["id"], opener_row["outputs"] or {})]
    elif barrier.over in gathered:
        execution_id = opener_row["execution_id"] or opener_row["id"]
        q = (
            select(states.c.id, states.c.outputs)
            .where(
                states.c.run_id == run_id,
                states.c.identifier == barrier.over,
                states.c.status == S.SUCCESS.value,
                states.c.outputs.is_not(None),
                or_(states.c.id == execution_id, states.c.execution_id == execution_id),
            )
            .order_by(states.c.branch)
        )
        gathered[barrier.over] = [(i, out) for i, out in conn.execute(q)]
    return gathered
