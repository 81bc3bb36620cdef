"""The statements every state runs, built once per process and executed with parameter dicts.

Building a SQLAlchemy expression costs more CPU than the database round trip it
sends, and a state runs four or five of them; a prebuilt statement also keeps
its cache key, so SQLAlchemy goes straight to the compiled SQL. Parameters are
named `p_*` so they never clash with the column names an UPDATE sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from sqlalchemy import JSON, bindparam, case, column, exists, func, insert, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from ..status import RunStatus, StateStatus
from .clock import ledger_now
from .moves import CANCEL_WAITING
from .notify import notify_run_ended
from .tables import graphs, runs, scopes, states, store

QUEUED = StateStatus.QUEUED.value
_ACTIVE_RUN = [RunStatus.PENDING.value, RunStatus.RUNNING.value]


def one_of(value: Any, choices: Iterable[str]) -> Any:
    """`value IN (choices)` as ORs: SQL text that does not depend on the values (an IN list is expanded per
    execution), so the statement is compiled once and can run on psycopg directly (`direct.py`)."""
    return or_(*(value == choice for choice in choices))


def _claim(with_namespace: bool, skip_locked: bool = False) -> Any:
    conditions = [
        states.c.id == bindparam("p_id"),
        states.c.status == QUEUED,
        # Times on the ledger's clock (issue 17): a host whose own clock runs ahead cannot take a lease early.
        states.c.due_at <= ledger_now() + bindparam("p_early", type_=states.c.due_at.type),
        or_(states.c.lease_until.is_(None), states.c.lease_until < ledger_now()),
        # A scalar subquery, not NOT EXISTS: the run is found by its key even in a generic plan.
        select(runs.c.status)
        .where(runs.c.id == states.c.run_id)
        .scalar_subquery()
        .is_distinct_from(RunStatus.CANCELLED.value),
    ]
    if with_namespace:
        conditions.append(states.c.namespace == bindparam("p_namespace"))
    if skip_locked:
        # PostgreSQL: a row locked by a live transaction (a long completion of this state) is busy:
        # the claim finds nothing and this copy is dropped, instead of waiting on the lock.
        conditions.append(states.c.id == unlocked(bindparam("p_id")))
    return (
        update(states)
        .where(*conditions)
        .values(
            lease_token=bindparam("p_token"),
            lease_until=ledger_now() + bindparam("p_lease_seconds", type_=states.c.lease_until.type),
            attempts=states.c.attempts + 1,
            started_at=ledger_now(),
            updated_at=ledger_now(),
        )
        .returning(*states.c)
    )


CLAIM = _claim(with_namespace=False)
"""Take the lease of a due QUEUED state whose run is not cancelled; returns the whole row."""

CLAIM_IN_NAMESPACE = _claim(with_namespace=True)
"""`CLAIM`, for a state of `p_namespace` only."""


def _start_run(run_id: Any) -> Any:
    return (
        update(runs)
        .where(runs.c.id == run_id, runs.c.status == RunStatus.PENDING.value)
        .values(status=RunStatus.RUNNING.value, started_at=ledger_now())
    )


START_RUN = _start_run(bindparam("p_run"))
"""A run becomes RUNNING when its root state is claimed."""


def unlocked(state_id: Any) -> Any:
    """PostgreSQL: the id of this state unless a live transaction holds its row (`FOR UPDATE SKIP LOCKED`)."""
    return select(states.c.id).where(states.c.id == state_id).with_for_update(skip_locked=True).scalar_subquery()


def _claim_starting_run(with_namespace: bool) -> Any:
    claimed = _claim(with_namespace, skip_locked=True).cte("claimed")
    started = _start_run(select(claimed.c.run_id).scalar_subquery()).returning(runs.c.id).cte("started")
    return select(claimed).add_cte(started)


CLAIM_STARTING_RUN = {False: _claim_starting_run(False), True: _claim_starting_run(True)}
"""PostgreSQL: `CLAIM` and `START_RUN` in one statement (only a root's claim finds its run PENDING),
keyed by whether the claim is limited to `p_namespace`; a state whose row is locked is not claimed."""

_FINISHABLE = (
    states.c.id == bindparam("p_id"),
    states.c.status == QUEUED,
    states.c.lease_token == bindparam("p_token"),
)

FINISH_STATE = update(states).where(*_FINISHABLE)
"""The compare-and-set that records an execution; the columns to set are the other keys of the parameters."""


def _finish(columns: tuple[str, ...], *also: Any) -> Any:
    """FINISH_STATE for use inside a CTE: the columns to set come as `v_<column>` parameters."""
    return (
        update(states)
        .where(*_FINISHABLE, *also)
        .values({c: bindparam(f"v_{c}", type_=states.c[c].type) for c in columns})
    )


@cache
def finish_then(columns: tuple[str, ...], then: str) -> Any:
    """FINISH_STATE and, in the same statement, MOVE_SCOPE (`then="scope"`) or MOVE_RUN_NOTIFYING (`"run"`).

    PostgreSQL only (a data-modifying CTE); the columns to set are passed as `v_<column>`. The move
    happens only if the compare-and-set did, so no row back means the state was not ours to finish.
    """
    finished = _finish(columns).returning(states.c.run_id).cte("finished")
    return _move_scope(finished) if then == "scope" else _move_run(finished, notify=True)


@cache
def finish_in_open_scope(columns: tuple[str, ...]) -> Any:
    """PostgreSQL: finish a state inside one region and move its scope, unless that empties the scope.

    One statement, safe on an autocommit connection: it locks the state row if the lease is still
    `p_token`'s, moves the scope only if it stays above zero, and finishes the state only if the scope
    moved, so either both change or nothing does. No row back: nothing changed (the scope would
    empty, so the barrier must fire in a transaction, or the state is not ours).
    """
    mine = select(states.c.run_id).where(*_FINISHABLE).with_for_update().cte("mine")
    moved = (
        update(scopes)
        .where(
            scopes.c.id == bindparam("p_scope"),
            scopes.c.run_id == mine.c.run_id,
            scopes.c.outstanding + bindparam("p_delta") > 0,
        )
        .values(outstanding=scopes.c.outstanding + bindparam("p_delta"), pruned=scopes.c.pruned + bindparam("p_pruned"))
        .returning(scopes.c.run_id, scopes.c.outstanding)
        .cte("moved")
    )
    # The state by its id, not joined on run_id: a plan could then scan the whole run.
    finished = _finish(columns, exists(select(moved.c.run_id))).returning(states.c.id).cte("finished")
    return select(moved.c.outstanding).add_cte(finished)


def _state_rows() -> Any:
    """PostgreSQL: the state rows of the JSON array `p_rows`, as a table with the states' column types."""
    return (
        func.json_to_recordset(bindparam("p_rows", type_=JSON))
        .table_valued(*(column(c.name, c.type) for c in states.c))
        .render_derived("new_rows", with_types=True)
    )


@cache
def finish_creating(columns: tuple[str, ...]) -> Any:
    """PostgreSQL: finish a state, insert the states it creates (`p_rows`) and move its run, in one statement.

    For a completion outside every region that opens no scope and writes no store (a hop of a chain):
    one autocommitted statement instead of a transaction of four. The run's row is locked by the move,
    which orders this against a concurrent cancel as the transaction did: a run found CANCELLED gets its
    new states inserted CANCELLED (`moves.CANCEL_WAITING`). No row back: the state was not ours, and
    nothing changed.
    """
    finished = _finish(columns).returning(states.c.run_id).cte("finished")
    moved = _moved_run(finished)
    rows = _state_rows()
    status = case(
        (
            (moved.c.status == RunStatus.CANCELLED.value) & one_of(rows.c.status, CANCEL_WAITING.source_values),
            CANCEL_WAITING.target,
        ),
        else_=rows.c.status,
    )
    chosen = [status if c.name == "status" else rows.c[c.name] for c in states.c]
    inserted = (
        insert(states)
        .from_select([c.name for c in states.c], select(*chosen).select_from(moved.join(rows, true())))
        .cte("inserted")
    )
    return _notifying(moved).add_cte(inserted)


def _move_scope(after: Any = None) -> Any:
    statement = update(scopes).where(scopes.c.id == bindparam("p_scope"))
    if after is not None:
        statement = statement.where(scopes.c.run_id == after.c.run_id)
    return statement.values(
        outstanding=scopes.c.outstanding + bindparam("p_delta"),
        failed=scopes.c.failed + bindparam("p_failed"),
        pruned=scopes.c.pruned + bindparam("p_pruned"),
    ).returning(scopes.c.outstanding, scopes.c.failed, scopes.c.pruned, scopes.c.opener_id)


MOVE_SCOPE = _move_scope()
"""Move a barrier's counters (`p_scope`); returns them as they now are."""


def _run_update(after: Any = None) -> Any:
    """UPDATE of a run's counters (`p_run`, `p_delta`, `p_failed`), ending it when it empties while active."""
    active = one_of(runs.c.status, _ACTIVE_RUN)
    ends = active & (runs.c.outstanding + bindparam("p_delta") <= 0)
    statement = update(runs).where(runs.c.id == bindparam("p_run"))
    if after is not None:
        statement = statement.where(runs.c.id == after.c.run_id)
    return statement.values(
        outstanding=runs.c.outstanding + bindparam("p_delta"),
        failed=runs.c.failed + bindparam("p_failed"),
        status=case(
            (ends & (runs.c.failed + bindparam("p_failed") > 0), RunStatus.FAILED.value),
            (ends, RunStatus.SUCCESS.value),
            else_=runs.c.status,
        ),
        finished_at=case((ends, ledger_now()), else_=runs.c.finished_at),
    )


def _moved_run(after: Any = None) -> Any:
    """`_run_update` as a CTE returning the run's id, status and finished_at as they now are."""
    return _run_update(after).returning(runs.c.id, runs.c.status, runs.c.finished_at).cte("moved_run")


def _notifying(moved: Any) -> Any:
    """SELECT the moved run's status, notifying its waiters if this statement ended it."""
    # RETURNING sees the new row only: the run ended here if it finished at this statement's time
    # (a run finished earlier, by another process, has another finished_at). A rare duplicate
    # notification would be harmless: waiters re-read the run.
    ended = (moved.c.finished_at == ledger_now()) & one_of(
        moved.c.status, [RunStatus.SUCCESS.value, RunStatus.FAILED.value]
    )
    return select(moved.c.status, case((ended, notify_run_ended(moved.c.id))).label("notified"))


def _move_run(after: Any = None, notify: bool = False) -> Any:
    if not notify:
        return _run_update(after).returning(runs.c.status)
    return _notifying(_moved_run(after))


MOVE_RUN = _move_run()
"""Move a run's counters (`p_run`); the statement that empties an active run ends it SUCCESS or FAILED."""

MOVE_RUN_NOTIFYING = _move_run(notify=True)
"""PostgreSQL: `MOVE_RUN`, and the run's waiters notified when it ends (`notify.CHANNEL`, on commit)."""

INSERT_STATES = insert(states)

_ROWS = _state_rows()
INSERT_STATES_FROM_JSON = insert(states).from_select([c.name for c in states.c], select(*_ROWS.c))
"""PostgreSQL: insert the state rows of the JSON array `p_rows` in one statement with one parameter (a
thousand rows cost one JSON encoding, where an executemany encodes and binds every row's columns)."""
INSERT_RUN = insert(runs)
INSERT_STORE = insert(store)


LATEST_VERSION = select(func.max(graphs.c.version)).where(
    graphs.c.namespace == bindparam("p_namespace"), graphs.c.name == bindparam("p_name")
)
"""The newest version number of a graph (None if it has none)."""


def _insert_run_with_root() -> Any:
    still_latest = LATEST_VERSION.scalar_subquery() == bindparam("r_graph_version")
    run_values = select(*(bindparam(f"r_{c.name}", type_=c.type) for c in runs.c)).where(still_latest)
    new_run = insert(runs).from_select([c.name for c in runs.c], run_values).returning(runs.c.id).cte("new_run")
    pairs = func.json_each_text(bindparam("p_store", type_=JSON)).table_valued("key", "value")
    new_store = (
        insert(store)
        .from_select(
            ["run_id", "key", "value"],
            select(new_run.c.id, pairs.c.key, pairs.c.value).select_from(new_run.join(pairs, true())),
        )
        .cte("new_store")
    )
    root_values = select(*(bindparam(f"s_{c.name}", type_=c.type) for c in states.c)).select_from(new_run)
    root = insert(states).from_select([c.name for c in states.c], root_values).returning(states.c.id)
    return root.add_cte(new_run).add_cte(new_store)


INSERT_RUN_WITH_ROOT = _insert_run_with_root()
"""PostgreSQL: a run (`r_<column>`), its store (`p_store`, a JSON object) and its root state
(`s_<column>`) in one statement, so a trigger is one round trip and needs no transaction. Nothing
is inserted (no row returned) unless `r_graph_version` is still the graph's newest version."""


def upsert_store(dialect: str, run_id: str, writes: dict[str, str]) -> Any:
    """One statement that sets store keys, inserting or overwriting each (issue 13, item 10).

    An UPDATE then an INSERT let two states writing the same new key at once collide on the
    primary key; ``INSERT ... ON CONFLICT DO UPDATE`` (PostgreSQL and SQLite alike) makes the
    later writer win instead. Keys go in sorted order so concurrent writers lock rows in one order.
    """
    rows = [{"run_id": run_id, "key": key, "value": writes[key]} for key in sorted(writes)]
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = make(store).values(rows)
    return statement.on_conflict_do_update(
        index_elements=[store.c.run_id, store.c.key], set_={"value": statement.excluded.value}
    )
