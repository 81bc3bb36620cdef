"""Sweeps beat runs: release due states, recover states whose worker died, re-send lost messages, retention."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update

from ..outcomes import Dispatch, dispatch_of
from ..status import TERMINAL_RUNS, StateStatus
from .access import LedgerAccess
from .clock import ledger_now
from .moves import RELEASE
from .runtimes import live_runtime_serves
from .tables import runs, scopes, states, store, store_writes

S = StateStatus


class Sweeps:
    """Beat's periodic work on states (each step a compare-and-set, safe with two beats)."""

    def __init__(self, access: LedgerAccess, lease_seconds: float) -> None:
        self.access = access
        self.lease_seconds = lease_seconds

    def release_due(self, horizon: float, limit: int = 2000) -> list[Dispatch]:
        """Move CREATED states due within `horizon` seconds to QUEUED; returns them to publish."""
        now = ledger_now()
        (created,) = RELEASE.source_values
        ids = select(states.c.id).where(states.c.status == created, states.c.due_at <= now + horizon).limit(limit)
        return self._mark_dispatched(
            update(states)
            .where(states.c.id.in_(ids.scalar_subquery()), states.c.status == created)
            .values(status=RELEASE.target, dispatched_at=now, updated_at=now)
        )

    def recover(self, limit: int = 2000) -> list[Dispatch]:
        """States whose worker died (their lease expired after a claim): certainly lost, publish them again.

        States never claimed are not re-sent here: whether their message is lost depends on what the
        broker still holds (`waiting_unclaimed` and `resend_oldest`, driven by beat's sweep). On
        PostgreSQL a state whose row a live transaction holds (its completion) is skipped.
        """
        now = ledger_now()
        expired = select(states.c.id).where(states.c.status == S.QUEUED.value, states.c.lease_until < now).limit(limit)
        if self.access.postgres:
            # A row locked by a live transaction is a completion still in progress (a wide fan-out can
            # outlast the lease), not a dead worker: skip it rather than wait on it and re-send it.
            expired = expired.with_for_update(skip_locked=True)
        return self._mark_dispatched(
            update(states)
            .where(states.c.id.in_(expired.scalar_subquery()), states.c.lease_until < now)
            .values(lease_token=None, lease_until=None, dispatched_at=now)
        )

    def waiting_unclaimed(self) -> list[tuple[str, str, int]]:
        """(namespace, node_name, count) of QUEUED states never claimed and due: their messages should be
        in the broker (queued or delivered and not yet claimed), or they are lost."""
        now = ledger_now()
        waiting = (
            select(states.c.namespace, states.c.node_name, func.count())
            .where(states.c.status == S.QUEUED.value, states.c.lease_until.is_(None), states.c.due_at <= now)
            .group_by(states.c.namespace, states.c.node_name)
        )
        with self.access.engine.connect() as conn:
            return [(ns, node, int(n)) for ns, node, n in conn.execute(waiting).all()]

    def resend_oldest(
        self, nodes: list[tuple[str, str]], count: int, dispatched_before: float | None = None
    ) -> list[Dispatch]:
        """Mark for re-sending the `count` never-claimed states of these (namespace, node_name) pairs that
        were dispatched first (a FIFO queue delivers those first, so theirs are the messages missing),
        skipping any dispatched or due less than a lease ago, and any dispatched at or after
        `dispatched_before` (the dispatch time of the oldest message still queued: the messages of later
        states are behind it, not lost)."""
        if count <= 0 or not nodes:
            return []
        now = ledger_now()
        stale = now - self.lease_seconds
        oldest = (
            select(states.c.id, states.c.dispatched_at, states.c.due_at)
            .where(
                states.c.status == S.QUEUED.value,
                states.c.lease_until.is_(None),
                states.c.due_at <= now,
                or_(*(and_(states.c.namespace == ns, states.c.node_name == node) for ns, node in nodes)),
                # Not lost, only waiting: its message sits in its node's queue until a runtime serving it
                # has been live for a lease.
                live_runtime_serves(states.c.namespace, states.c.node_name, for_at_least=self.lease_seconds),
            )
            .order_by(states.c.dispatched_at)
            .limit(count)
            .subquery()
        )
        chosen = select(oldest.c.id).where(oldest.c.dispatched_at < stale, oldest.c.due_at < stale)
        if dispatched_before is not None:
            chosen = chosen.where(oldest.c.dispatched_at < dispatched_before)
        return self._mark_dispatched(
            update(states)
            .where(states.c.id.in_(chosen.scalar_subquery()), states.c.lease_until.is_(None))
            .values(dispatched_at=now)
        )

    def _mark_dispatched(self, statement: Any) -> list[Dispatch]:
        with self.access.engine.begin() as conn:
            rows = (
                conn.execute(
                    statement.returning(
                        states.c.id,
                        states.c.run_id,
                        states.c.namespace,
                        states.c.node_name,
                        states.c.graph_name,
                        states.c.identifier,
                        states.c.due_at,
                    )
                )
                .mappings()
                .all()
            )
        return [dispatch_of(dict(r)) for r in rows]


def purge_finished_runs(engine: Engine, older_than: float, batch: int = 500, max_states: int = 20_000) -> int:
    """Delete runs finished before `older_than`, with their states, scopes, store and store writes.

    One transaction of at most `batch` runs and, past the first run, at most `max_states` state rows:
    each run goes whole or not at all, so the API never shows a run half deleted. Returns the runs
    deleted (0: none left); safe to repeat, and with two beats.
    """
    with engine.begin() as conn:
        ids = list(
            conn.execute(
                select(runs.c.id)
                .where(runs.c.status.in_([s.value for s in TERMINAL_RUNS]), runs.c.finished_at < older_than)
                .limit(batch)
            ).scalars()
        )
        if not ids:
            return 0
        ids = _within(conn, ids, max_states)
        for table in (states, scopes, store, store_writes):
            conn.execute(delete(table).where(table.c.run_id.in_(ids)))
        conn.execute(delete(runs).where(runs.c.id.in_(ids)))
    return len(ids)


def _within(conn: Any, ids: list[str], max_states: int) -> list[str]:
    """The first of these runs whose state rows add up to at most `max_states` (always the first run).

    Counted in chunks of 1, 2, 4, ... runs (each an index lookup, whatever the planner thinks of a long
    list), stopping at the first run over the cap: at most about twice the cap's rows are counted.
    """
    chosen: list[str] = []
    total, size = 0, 1
    while len(chosen) < len(ids):
        chunk = ids[len(chosen) : len(chosen) + size]
        counts = dict(
            conn.execute(
                select(states.c.run_id, func.count()).where(states.c.run_id.in_(chunk)).group_by(states.c.run_id)
            ).all()
        )
        for run_id in chunk:
            total += counts.get(run_id, 0)
            if chosen and total > max_states:
                return chosen
            chosen.append(run_id)
        size *= 2
    return chosen


def dispatched_at(engine: Engine, state_ids: list[str]) -> dict[str, float]:
    """The last dispatch time (ledger clock) of each of these states that exists and has one."""
    if not state_ids:
        return {}
    found = select(states.c.id, states.c.dispatched_at).where(
        states.c.id.in_(state_ids), states.c.dispatched_at.is_not(None)
    )
    with engine.connect() as conn:
        return {sid: float(at) for sid, at in conn.execute(found).all()}
