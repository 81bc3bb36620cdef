"""State transitions: each one a compare-and-set in one transaction, safe to repeat.

A transition that finds its state no longer in the expected status (or its
lease taken over) changes nothing: a duplicate or redelivered message, or a
worker that lost its lease, stops quietly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from ..engine import (
    DEFAULT_MAX_INPUT_BYTES,
    CompiledGraph,
    NewState,
    PlanError,
    Source,
    barrier_fires,
    lineage_refs,
    plan_barrier_state,
    plan_success,
)
from ..errors import NotFoundError, StateError
from ..status import FAILED_STATES, RunStatus, StateStatus
from ..topology import Barrier
from . import clock
from .clock import ledger_now
from .db import get_engine, is_postgres
from .notify import notify_run_ended
from .repo import outputs_of, state_values
from .runtimes import live_runtime_serves
from .statements import (
    CLAIM,
    CLAIM_IN_NAMESPACE,
    CLAIM_STARTING_RUN,
    FINISH_STATE,
    INSERT_STATES,
    MOVE_RUN,
    MOVE_RUN_NOTIFYING,
    MOVE_SCOPE,
    START_RUN,
    finish_in_open_scope,
    finish_then,
    upsert_store,
)
from .store_writes import record_store_writes
from .tables import runs, scopes, states, store

S = StateStatus
EARLY_TOLERANCE = 0.02  # seconds a message may arrive before its due time and still run
MAX_DELIVERIES = 20  # a state whose worker died this many times in a row is ERRORED, not re-sent forever


@dataclass(frozen=True)
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

    kind: str  # "success", "error", "prune" or "requeue"
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    data: dict[str, Any] | None = None
    delay: float = 0.0  # requeue delay, seconds
    retryable: bool = True
    store_writes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """What `complete` did: the state's new status (None if another delivery got there first),
    the states to publish, and every state it created as (id, identifier, status)."""

    status: str | None
    dispatches: list[Dispatch]
    created: list[tuple[str, str, str]]


def dispatch_of(row: dict[str, Any]) -> Dispatch:
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


class Transitions:
    """Every status change of states and runs."""

    def __init__(
        self,
        url: str,
        lease_seconds: float,
        max_countdown: float,
        *,
        worker: bool = False,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    ) -> None:
        self.url = url
        self.max_input_bytes = max_input_bytes  # rendered inputs of a new state (EXO_MAX_INPUT_BYTES)
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.max_countdown = max_countdown
        self.postgres = is_postgres(url)  # some transitions take fewer statements (data-modifying CTEs)

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, worker=self.worker)

    def _status_for_due(self, due_at: float, now: float) -> StateStatus:
        """QUEUED (sent now, with a countdown) when due soon enough; else CREATED (beat releases it)."""
        return S.QUEUED if due_at - now <= self.max_countdown else S.CREATED

    def now(self) -> float:
        """The ledger's time (`clock.now`): what this process writes as a timestamp or a due time."""
        return clock.now(self.url)

    # -- claiming ---------------------------------------------------------
    def claim(self, state_id: str, token: str, namespace: str | None = None) -> tuple[str, dict[str, Any] | None]:
        """Take the lease on a QUEUED state: ("claimed", row), ("early", row) or ("skip", None).

        With `namespace`, only a state of that namespace is claimed (a misrouted message is ignored).
        """
        params = {
            "p_id": state_id,
            "p_early": EARLY_TOLERANCE,
            "p_token": token,
            "p_lease_seconds": self.lease_seconds,
            "p_namespace": namespace,
        }
        with self._autocommit_connection() as conn:
            if self.postgres:
                row = conn.execute(CLAIM_STARTING_RUN[namespace is not None], params).mappings().first()
            else:
                row = conn.execute(CLAIM if namespace is None else CLAIM_IN_NAMESPACE, params).mappings().first()
                if row is not None and not row["parents"]:
                    conn.execute(START_RUN, {"p_run": row["run_id"]})
            if row is not None:
                conn.commit()
                return "claimed", dict(row)
            found = conn.execute(select(states, ledger_now().label("ledger_now")).where(states.c.id == state_id))
            current = found.mappings().first()
            if current is not None and current["status"] in (S.QUEUED.value, S.CREATED.value):
                if self._cancelled_run(conn, dict(current)):
                    conn.commit()
                    return "skip", None
        if current is not None and current["status"] == S.QUEUED.value and current["due_at"] > current["ledger_now"]:
            return "early", {k: v for k, v in current.items() if k != "ledger_now"}
        return "skip", None

    def _autocommit_connection(self) -> Connection:
        """On PostgreSQL, a connection whose statements commit on their own: a transition that is one
        statement (the claim, a leaf's completion) needs no BEGIN and COMMIT, two round trips less.
        On SQLite, an ordinary connection (it begins IMMEDIATE on first use)."""
        return get_engine(self.url, worker=self.worker, autocommit=True).connect()

    def _cancelled_run(self, conn: Connection, row: dict[str, Any]) -> bool:
        """True (and the state CANCELLED) when the state's run was cancelled while it waited."""
        status = conn.execute(select(runs.c.status).where(runs.c.id == row["run_id"])).scalar()
        if status != RunStatus.CANCELLED.value:
            return False
        conn.execute(
            update(states)
            .where(states.c.id == row["id"])
            .values(status=S.CANCELLED.value, lease_token=None, lease_until=None, updated_at=ledger_now())
        )
        return True

    def _plan_reads(
        self, run_id: str, ancestors: list[str], reads_store: bool
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """What planning the children reads: ancestors' outputs (never change once written) and the store."""
        if not ancestors and not reads_store:
            return {}, {}
        with self._autocommit_connection() as conn:
            return outputs_of(conn, ancestors), _read_store(conn, run_id) if reads_store else {}

    def renew_leases(self, leases: dict[str, str]) -> None:
        """Extend the leases of states this process is still executing (state id -> lease token)."""
        if not leases:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(states)
                .where(
                    states.c.id.in_(list(leases)),
                    states.c.lease_token.in_(list(leases.values())),
                    states.c.status == S.QUEUED.value,
                )
                .values(lease_until=ledger_now() + self.lease_seconds)
            )

    def lost_leases(self, leases: dict[str, str]) -> set[str]:
        """Of these executing states (id -> lease token), those whose lease is gone: cancelled or taken over."""
        if not leases:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(states.c.id, states.c.lease_token, states.c.status).where(states.c.id.in_(list(leases)))
            ).all()
        held = {r.id for r in rows if r.lease_token == leases[r.id] and r.status == S.QUEUED.value}
        return set(leases) - held

    # -- completing -------------------------------------------------------
    def complete(self, graph: CompiledGraph, row: dict[str, Any], token: str, outcome: Outcome) -> Completion:
        """Record how an execution ended and everything it causes; says what to publish and log."""
        try:
            return self._complete(graph, row, token, outcome)
        except _NotOurs:
            return Completion(None, [], [])

    def _complete(self, graph: CompiledGraph, row: dict[str, Any], token: str, outcome: Outcome) -> Completion:
        now = self.now()
        topo = graph.topology
        ident = row["identifier"]
        values: dict[str, Any] = {"lease_token": None, "lease_until": None, "updated_at": now}
        created: list[NewState] = []  # states that will run (count in scopes and the run)
        finished: list[NewState] = []  # fan-out outputs, inserted already SUCCESS
        opens: list[Any] = []
        leaving, failed_inc, pruned_inc = True, 0, 0
        created_due = now
        dispatches: list[Dispatch] = []
        if outcome.kind == "success":
            values["outputs"] = outcome.outputs[0] if outcome.outputs else None
            try:
                needed, reads_store = lineage_refs(topo, topo.direct_children(ident))
                ancestors = [row["parents"][i] for i in needed if i in row["parents"]]
                known, store_now = self._plan_reads(row["run_id"], ancestors, reads_store)
                store_now.update(outcome.store_writes)
                rules = graph.input_rules(self.max_input_bytes)
                plan = plan_success(topo, graph.namespace_of, _source(row), outcome.outputs, known, store_now, rules)
                values["status"] = S.SUCCESS.value
                created, finished, opens = plan.children, plan.output_states, plan.opens
                for output_state in finished:
                    output_state.inputs = row["inputs"]
            except PlanError as exc:
                values.update(status=S.NEXT_CREATED_ERROR.value, error=_text(str(exc)))
                failed_inc = 1
        elif outcome.kind == "requeue":
            due = now + outcome.delay
            values.update(status=self._status_for_due(due, now).value, due_at=due, dispatched_at=now, attempts=0)
            leaving = False
        elif outcome.kind == "prune":
            values.update(status=S.PRUNED.value, data=outcome.data or {})
            pruned_inc = 1
        else:
            policy = graph.template.retry_policy
            values["error"] = _text(outcome.error)
            if outcome.retryable and row["retry_count"] < policy.max_retries:
                due = now + policy.compute_delay(row["retry_count"] + 1) / 1000.0
                values["status"] = S.RETRY_CREATED.value
                retry = NewState(
                    _fresh_id(),
                    ident,
                    row["node_name"],
                    row["namespace"],
                    row["inputs"],
                    row["parents"],
                    row["scopes"],
                    row["branch"],
                    self._status_for_due(due, now),
                    retry_of=row["id"],
                    retry_count=row["retry_count"] + 1,
                )
                created, created_due = [retry], due
            else:
                values["status"] = S.ERRORED.value
                failed_inc = 1

        compare_and_set = {"p_id": row["id"], "p_token": token, **values}
        no_other_rows = not (created or finished or opens or outcome.store_writes)
        if self.postgres and leaving and no_other_rows and not failed_inc and len(row["scopes"]) == 1:
            # A leaf inside one region (a fan-out branch that ends): one autocommitted statement,
            # unless it is the region's last state and the barrier must fire (the transaction below).
            with self._autocommit_connection() as conn:
                alone = _Finish(compare_and_set)  # neither use changes the dict
                if alone.in_open_scope(conn, next(iter(row["scopes"].values())), pruned_inc):
                    return Completion(values["status"], [], [])

        # A change that is one statement (no new rows, no store writes, no scope that could fire:
        # a leaf outside every region, or a requeue) needs no transaction on PostgreSQL.
        single = self.postgres and no_other_rows and (not row["scopes"] or not leaving)
        with self._autocommit_connection() if single else self.engine.begin() as conn:
            finish = _Finish(compare_and_set)
            if not self.postgres or outcome.store_writes:
                finish.flush(conn)

            if outcome.kind == "success" and outcome.store_writes:
                _write_store(conn, row["run_id"], outcome.store_writes)
                record_store_writes(conn, row["run_id"], row["id"], outcome.store_writes, now)
            if outcome.kind == "requeue":
                if values["status"] == S.QUEUED.value:
                    dispatches.append(dispatch_of({**row, "due_at": values["due_at"]}))
            _insert_states(conn, finished, row, now, now)
            _insert_states(conn, created, row, now, created_due)

            fired: list[NewState] = []
            fired_errors: list[NewState] = []
            open_scopes = 0  # change in the number of open scopes (the run counts each one once)
            for name in topo.barrier_order:
                barrier = topo.barriers[name]
                if barrier.over == ident:
                    for op in (o for o in opens if o.barrier == name):
                        conn.execute(
                            insert(scopes).values(
                                id=op.id,
                                run_id=row["run_id"],
                                barrier=name,
                                opener_id=op.opener_id,
                                outstanding=op.outstanding,
                                failed=0,
                                pruned=0,
                            )
                        )
                        if op.outstanding == 0:
                            self._fire(conn, graph, barrier, op.id, op.opener_id, 0, 0, row, fired, fired_errors)
                        else:
                            open_scopes += 1
                elif ident in barrier.region and name in row["scopes"]:
                    sid = row["scopes"][name]
                    born = sum(
                        1 for s in (*created, *fired) if s.identifier in barrier.region and s.scopes.get(name) == sid
                    )
                    failed_here = failed_inc + sum(
                        1 for s in fired_errors if s.identifier in barrier.region and s.scopes.get(name) == sid
                    )
                    delta = born - (1 if leaving else 0)
                    if delta == 0 and not failed_here and not pruned_inc:
                        continue
                    scope = finish.move(
                        conn,
                        "scope",
                        {"p_scope": sid, "p_delta": delta, "p_failed": failed_here, "p_pruned": pruned_inc},
                    )
                    if scope is None:
                        continue
                    open_scopes += _opened_or_closed(scope.outstanding - delta, scope.outstanding)
                    if scope.outstanding == 0 and delta < 0:
                        self._fire(
                            conn,
                            graph,
                            barrier,
                            sid,
                            scope.opener_id,
                            scope.failed,
                            scope.pruned,
                            row,
                            fired,
                            fired_errors,
                        )

            # The run counts its states outside every barrier's region, plus one per open scope:
            # a state inside a region moves only its scopes, never the run's hot row.
            run_delta = sum(1 for s in (*created, *fired) if not s.scopes) + open_scopes
            if leaving and not row["scopes"]:
                run_delta -= 1
            run_failed = failed_inc + len(fired_errors)
            if run_delta or run_failed or created or fired:
                # Locking the run row here orders this commit against a concurrent cancel: either
                # cancel sees these new states, or this sees the run CANCELLED and cancels them.
                moved = finish.move(conn, "run", {"p_run": row["run_id"], "p_delta": run_delta, "p_failed": run_failed})
                if moved is not None and moved.status == RunStatus.CANCELLED.value:
                    new_ids = [x.id for x in (*created, *fired)]
                    conn.execute(
                        update(states).where(states.c.id.in_(new_ids)).values(status=S.CANCELLED.value, updated_at=now)
                    )
                    created, fired = [], []
            finish.flush(conn)
            for batch, due in ((created, created_due), (fired, now)):
                dispatches.extend(
                    Dispatch(s.id, row["run_id"], s.namespace, s.node_name, row["graph_name"], s.identifier, due)
                    for s in batch
                    if s.status == S.QUEUED
                )
        new_states = [(s.id, s.identifier, s.status.value) for s in (*created, *fired, *fired_errors)]
        return Completion(values["status"], dispatches, new_states)

    def _fire(
        self,
        conn: Connection,
        graph: CompiledGraph,
        barrier: Barrier,
        sid: str,
        opener_id: str,
        failed: int,
        pruned: int,
        row: dict[str, Any],
        fired: list[NewState],
        fired_errors: list[NewState],
    ) -> None:
        """Create the state of a barrier whose scope just emptied (once: the fingerprint is unique)."""
        if not barrier_fires(barrier, failed, pruned):
            return
        topo = graph.topology
        opener_row = conn.execute(select(states).where(states.c.id == opener_id)).mappings().first()
        if opener_row is None:
            return
        opener = _source(dict(opener_row))
        refs, _ = lineage_refs(topo, [barrier.node])
        gather_ids = sorted(refs & (barrier.region | {barrier.over}))
        gathered: dict[str, list[tuple[str, dict[str, Any]]]] = {i: [] for i in gather_ids}
        region_ids = [i for i in gather_ids if i != barrier.over]
        if region_ids:
            q = (
                select(states.c.id, states.c.identifier, states.c.outputs)
                .where(
                    states.c.run_id == row["run_id"],
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
            gathered[barrier.over] = [(opener.id, opener_row["outputs"] or {})]
        elif barrier.over in gathered:
            q = (
                select(states.c.id, states.c.outputs)
                .where(
                    states.c.run_id == row["run_id"],
                    states.c.identifier == barrier.over,
                    states.c.status == S.SUCCESS.value,
                    states.c.outputs.is_not(None),
                    or_(states.c.id == opener.execution_id, states.c.execution_id == opener.execution_id),
                )
                .order_by(states.c.branch)
            )
            gathered[barrier.over] = [(i, out) for i, out in conn.execute(q)]
        lineage = refs & set(opener.parents) - set(gather_ids)
        known = outputs_of(conn, [opener.parents[i] for i in lineage])
        _, reads_store = lineage_refs(topo, [barrier.node])
        store_now = _read_store(conn, row["run_id"]) if reads_store else {}
        try:
            rules = graph.input_rules(self.max_input_bytes)
            state = plan_barrier_state(
                topo, graph.namespace_of, barrier, opener, sid, gathered, known, store_now, rules
            )
        except PlanError as exc:
            spec = topo.nodes[barrier.node]
            state = NewState(
                _fresh_id(),
                barrier.node,
                spec.node_name,
                graph.namespace_of(barrier.node),
                {},
                dict(opener.parents),
                {},
                opener.branch,
                S.ERRORED,
                fingerprint=sid,
            )
            if _insert_unique(conn, state, row, self.now(), error=f"inputs could not be resolved: {exc}"):
                fired_errors.append(state)
            return
        if _insert_unique(conn, state, row, self.now()):
            fired.append(state)

    # -- operator actions ---------------------------------------------------
    def manual_retry(self, state_id: str) -> tuple[dict[str, Any], list[Dispatch]]:
        """Retry an ERRORED (or NEXT_CREATED_ERROR / CANCELLED) state; repeating it returns the same retry."""
        now = self.now()
        with self.engine.begin() as conn:
            row = conn.execute(select(states).where(states.c.id == state_id)).mappings().first()
            if row is None:
                raise NotFoundError(f"state {state_id!r} does not exist")
            existing = conn.execute(select(states).where(states.c.retry_of == state_id)).mappings().first()
            if existing is not None:
                return dict(existing), []
            if row["status"] not in {*(s.value for s in FAILED_STATES), S.CANCELLED.value}:
                raise StateError(
                    f"state {state_id!r} is {row['status']}; only ERRORED, NEXT_CREATED_ERROR or CANCELLED "
                    "states can be retried"
                )
            run = conn.execute(select(runs).where(runs.c.id == row["run_id"])).mappings().first()
            if run is None or run["status"] == RunStatus.CANCELLED.value:
                raise StateError(f"run {row['run_id']!r} was cancelled; its states cannot be retried")
            was_failed = row["status"] in {s.value for s in FAILED_STATES}
            moved = conn.execute(
                update(states)
                .where(states.c.id == state_id, states.c.status == row["status"])
                .values(status=S.RETRY_CREATED.value, updated_at=now)
            ).rowcount
            if not moved:
                raise StateError(f"state {state_id!r} changed while retrying it; try again")
            retry = NewState(
                _fresh_id(),
                row["identifier"],
                row["node_name"],
                row["namespace"],
                row["inputs"],
                row["parents"],
                row["scopes"],
                row["branch"],
                S.QUEUED,
                retry_of=state_id,
                retry_count=row["retry_count"] + 1,
            )
            _insert_states(conn, [retry], dict(row), now, now)
            run_delta = 0 if row["scopes"] else 1
            for sid in row["scopes"].values():
                now_outstanding = conn.execute(
                    MOVE_SCOPE, {"p_scope": sid, "p_delta": 1, "p_failed": -1 if was_failed else 0, "p_pruned": 0}
                ).scalar()
                if now_outstanding is not None:
                    run_delta += _opened_or_closed(now_outstanding - 1, now_outstanding)
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
            created = conn.execute(select(states).where(states.c.id == retry.id)).mappings().one()
        return dict(created), [dispatch_of(dict(created))]

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run: its waiting and executing states become CANCELLED (executing ones lose their lease,
        which their worker notices and stops the node; whatever they return is not recorded)."""
        now = ledger_now()
        with self.engine.begin() as conn:
            run = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            if run is None:
                raise NotFoundError(f"run {run_id!r} does not exist")
            if run["status"] in (RunStatus.SUCCESS.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value):
                return dict(run)
            # The run row first: a completion committing meanwhile either ran before this (and its
            # children are visible to the next statement) or waits and then cancels its own children.
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=RunStatus.CANCELLED.value, outstanding=0, finished_at=now)
            )
            if self.postgres:
                conn.execute(select(notify_run_ended(run_id)))  # the run's waiters wake on commit
            pending = (
                select(states.c.id)
                .where(states.c.run_id == run_id, states.c.status.in_([S.CREATED.value, S.QUEUED.value]))
                .with_for_update(skip_locked=True)  # a state being completed right now cancels its own children
            )
            conn.execute(
                update(states)
                .where(states.c.id.in_(pending.scalar_subquery()))
                .values(status=S.CANCELLED.value, lease_token=None, lease_until=None, updated_at=now)
            )
            return dict(conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one())

    # -- beat ---------------------------------------------------------------
    def release_due(self, horizon: float, limit: int = 2000) -> list[Dispatch]:
        """Move CREATED states due within `horizon` seconds to QUEUED; returns them to publish."""
        now = ledger_now()
        ids = (
            select(states.c.id).where(states.c.status == S.CREATED.value, states.c.due_at <= now + horizon).limit(limit)
        )
        return self._mark_dispatched(
            update(states)
            .where(states.c.id.in_(ids.scalar_subquery()), states.c.status == S.CREATED.value)
            .values(status=S.QUEUED.value, dispatched_at=now, updated_at=now)
        )

    def recover(self, limit: int = 2000) -> list[Dispatch]:
        """States whose worker died (their lease expired after a claim): certainly lost, publish them again.

        States never claimed are not re-sent here: whether their message is lost depends on what the
        broker still holds (`waiting_unclaimed` and `resend_oldest`, driven by beat's sweep).
        """
        now = ledger_now()
        expired = select(states.c.id).where(states.c.status == S.QUEUED.value, states.c.lease_until < now).limit(limit)
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
        with self.engine.connect() as conn:
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
        with self.engine.begin() as conn:
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


def _text(value: str | None) -> str | None:
    """Text the ledger can store: PostgreSQL text holds no NUL, and UTF-8 no lone surrogate (both escaped)."""
    return None if value is None else value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def _fresh_id() -> str:
    from ..engine import new_id

    return new_id()


def _source(row: dict[str, Any]) -> Source:
    return Source(
        row["id"],
        row["run_id"],
        row["identifier"],
        row["parents"] or {},
        row["scopes"] or {},
        row["branch"] or "",
        row["execution_id"] or row["id"],
    )


def _insert_states(conn: Connection, new: list[NewState], row: dict[str, Any], now: float, due_at: float) -> None:
    if new:
        conn.execute(INSERT_STATES, [state_values(s, row, now, due_at) for s in new])


def _insert_unique(
    conn: Connection, state: NewState, row: dict[str, Any], now: float, error: str | None = None
) -> bool:
    """Insert a barrier state unless its fingerprint exists already (a race lost)."""
    from sqlalchemy.exc import IntegrityError

    values = state_values(state, row, now, now)
    values["error"] = error
    try:
        with conn.begin_nested():
            conn.execute(INSERT_STATES, values)
        return True
    except IntegrityError:
        return False


def _opened_or_closed(before: int, after: int) -> int:
    """+1 when a scope's count leaves zero, -1 when it reaches zero, else 0 (what the run counts of it)."""
    return int(before <= 0 < after) - int(after <= 0 < before)


class _NotOurs(Exception):
    """The state was finished by another delivery, or its lease was taken over: change nothing."""


class _Finish:
    """The compare-and-set of a completing state. On PostgreSQL it rides in the first counter move
    of the transaction (one statement, one round trip less); `flush` sends it on its own otherwise."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params: dict[str, Any] | None = params

    def flush(self, conn: Connection) -> None:
        if self.params is not None:
            params, self.params = self.params, None
            if not conn.execute(FINISH_STATE, params).rowcount:
                raise _NotOurs

    def _take(self) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The columns to set, and the parameters of a merged statement (`v_<column>`)."""
        assert self.params is not None
        finish, self.params = self.params, None
        columns = tuple(k for k in finish if not k.startswith("p_"))
        return columns, {"p_id": finish["p_id"], "p_token": finish["p_token"], **{f"v_{c}": finish[c] for c in columns}}

    def in_open_scope(self, conn: Connection, scope_id: str, pruned: int) -> bool:
        """PostgreSQL, on an autocommit connection: finish the state and move its one scope by -1 in one
        statement. False, and nothing changed, if that would empty the scope or the state is not ours."""
        columns, params = self._take()
        params.update(p_scope=scope_id, p_delta=-1, p_pruned=pruned)
        return conn.execute(finish_in_open_scope(columns), params).first() is not None

    def move(self, conn: Connection, counter: str, params: dict[str, Any]) -> Any:
        """MOVE_SCOPE (`counter="scope"`) or MOVE_RUN (`"run"`), with the compare-and-set if still pending."""
        if self.params is None:
            if counter == "scope":
                return conn.execute(MOVE_SCOPE, params).first()
            postgres = conn.dialect.name == "postgresql"
            return conn.execute(MOVE_RUN_NOTIFYING if postgres else MOVE_RUN, params).first()
        columns, merged = self._take()
        moved = conn.execute(finish_then(columns, counter), {**merged, **params}).first()
        if moved is None:
            raise _NotOurs
        return moved


def _read_store(conn: Connection, run_id: str) -> dict[str, str]:
    return dict(conn.execute(select(store.c.key, store.c.value).where(store.c.run_id == run_id)).all())


def _write_store(conn: Connection, run_id: str, writes: dict[str, str]) -> None:
    conn.execute(upsert_store(conn.dialect.name, run_id, writes))
