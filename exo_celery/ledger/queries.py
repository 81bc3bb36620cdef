"""Aggregated read queries for the HTTP API, the dashboard and `/metrics`: counted in SQL, never row by row.

Nothing here writes. A run page of a 5,000-branch fan-out costs a handful of GROUP BY statements,
not 5,000 rows shipped to Python.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, case, func, select, union

from ..status import ACTIVE_STATES, FAILED_STATES, StateStatus
from .clock import ledger_now
from .db import get_engine
from .runtimes import Runtimes
from .store_writes import store_writes_of
from .tables import graphs, nodes, runs, scopes, states, store

S = StateStatus
_ACTIVE = [s.value for s in ACTIVE_STATES]
_FAILED = [s.value for s in FAILED_STATES]
_DONE_OK = [S.SUCCESS.value, S.PRUNED.value]
_TERMINAL_EXECUTED = [
    S.SUCCESS.value,
    S.ERRORED.value,
    S.PRUNED.value,
    S.RETRY_CREATED.value,
    S.NEXT_CREATED_ERROR.value,
]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (s) of the latency histograms on `/metrics`."""


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


class Queries:
    """Read-only aggregates over one ledger."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def engine(self) -> Engine:
        return get_engine(self.url)

    # -- namespaces, graphs, nodes ---------------------------------------------
    def namespaces(self) -> list[str]:
        """Every namespace that has a graph, a registered node or a run."""
        q = union(select(graphs.c.namespace), select(nodes.c.namespace), select(runs.c.namespace).distinct())
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(q))

    def graphs_in(self, namespace: str) -> list[dict[str, Any]]:
        """The latest version of each graph of a namespace, with its template."""
        latest = (
            select(graphs.c.name, func.max(graphs.c.version).label("version"))
            .where(graphs.c.namespace == namespace)
            .group_by(graphs.c.name)
            .subquery()
        )
        q = (
            select(graphs.c.name, graphs.c.version, graphs.c.template, graphs.c.updated_at)
            .join(latest, and_(graphs.c.name == latest.c.name, graphs.c.version == latest.c.version))
            .where(graphs.c.namespace == namespace)
            .order_by(graphs.c.name)
        )
        firsts = (
            select(graphs.c.name, func.min(graphs.c.updated_at))
            .where(graphs.c.namespace == namespace)
            .group_by(graphs.c.name)
        )
        with self.engine.connect() as conn:
            created: dict[str, float] = {name: ts for name, ts in conn.execute(firsts).all()}
            return [dict(r, created_at=created.get(r["name"])) for r in conn.execute(q).mappings()]

    def nodes_in(self, namespace: str) -> list[dict[str, Any]]:
        """Registered nodes of a namespace: name, schema, the runtime that registered it, when."""
        q = select(nodes).where(nodes.c.namespace == namespace).order_by(nodes.c.node_name)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def runtimes(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's runtimes registered in the last day, newest first, each with `nodes`, `live`
        (on the ledger's clock) and `heartbeat_age`."""
        return Runtimes(self.url, stale_after=0.0).list_runtimes(namespace)

    def unserved_nodes(self, run_id: str) -> dict[tuple[str, str], int]:
        """(namespace, node) -> the run's waiting states that no live runtime serves."""
        return Runtimes(self.url, stale_after=0.0).waiting_nodes(run_id)

    # -- runs ---------------------------------------------------------------------
    def runs_page(
        self,
        namespaces: list[str],
        graph_name: str | None = None,
        status: str | None = None,
        page: int = 1,
        size: int = 20,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total, one page of runs newest first, each with its states counted by kind)."""
        where = [runs.c.namespace.in_(namespaces)]
        if graph_name:
            where.append(runs.c.graph_name == graph_name)
        if status:
            where.append(runs.c.status == status)
        listing = select(runs).where(*where).order_by(runs.c.created_at.desc()).offset((page - 1) * size).limit(size)
        with self.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(runs).where(*where)).scalar() or 0)
            found = [dict(r) for r in conn.execute(listing).mappings()]
            counts = self._run_counts(conn, [r["id"] for r in found])
        empty = {"success_count": 0, "pending_count": 0, "errored_count": 0, "retried_count": 0, "total_count": 0}
        for r in found:
            r.update(counts.get(r["id"], empty))
        return total, found

    @staticmethod
    def _run_counts(conn: Any, run_ids: list[str]) -> dict[str, dict[str, int]]:
        if not run_ids:
            return {}
        q = (
            select(
                states.c.run_id,
                _count_if(states.c.status.in_(_DONE_OK)).label("success_count"),
                _count_if(states.c.status.in_(_ACTIVE)).label("pending_count"),
                _count_if(states.c.status.in_(_FAILED)).label("errored_count"),
                _count_if(states.c.status == S.RETRY_CREATED.value).label("retried_count"),
                func.count().label("total_count"),
            )
            .where(states.c.run_id.in_(run_ids))
            .group_by(states.c.run_id)
        )
        return {r["run_id"]: {k: int(v) for k, v in r.items() if k != "run_id"} for r in conn.execute(q).mappings()}

    def node_summary(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Per template identifier: counts by status, first start, last update, and what waits for when."""
        now = ledger_now()
        q = (
            select(
                states.c.identifier,
                states.c.status,
                func.count().label("n"),
                func.min(states.c.created_at).label("first_created"),
                func.max(states.c.updated_at).label("last_updated"),
                func.min(states.c.due_at).label("next_due"),
                _count_if(states.c.due_at > now).label("not_due"),
                _count_if(states.c.lease_token.is_not(None)).label("running"),
                _count_if(and_(states.c.lease_token.is_(None), states.c.due_at <= now)).label("ready"),
            )
            .where(states.c.run_id == run_id)
            .group_by(states.c.identifier, states.c.status)
        )
        result: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(q).mappings():
                entry = result.setdefault(
                    r["identifier"],
                    {
                        "counts": {},
                        "first_created": None,
                        "last_updated": None,
                        "next_due": None,
                        "not_due": 0,
                        "running": 0,
                        "queued_ready": 0,
                        "created_ready": 0,
                    },
                )
                entry["counts"][r["status"]] = int(r["n"])
                entry["first_created"] = _min(entry["first_created"], r["first_created"])
                entry["last_updated"] = _max(entry["last_updated"], r["last_updated"])
                if r["status"] in (S.CREATED.value, S.QUEUED.value) and r["not_due"]:
                    entry["next_due"] = _min(entry["next_due"], r["next_due"])
                    entry["not_due"] += int(r["not_due"])
                if r["status"] == S.QUEUED.value:
                    entry["running"] += int(r["running"])
                    entry["queued_ready"] += int(r["ready"])
                if r["status"] == S.CREATED.value:
                    entry["created_ready"] += int(r["ready"])
        return result

    def scopes_of(self, run_id: str) -> list[dict[str, Any]]:
        """The run's join and unite barriers: which node, how many branches are still open, failed, pruned."""
        q = select(scopes).where(scopes.c.run_id == run_id).order_by(scopes.c.barrier, scopes.c.id).limit(200)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def states_page(
        self,
        run_id: str,
        identifier: str | None = None,
        statuses: list[str] | None = None,
        page: int = 1,
        size: int = 50,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total, one page of a run's states, optionally of one node and some statuses), oldest first."""
        where = [states.c.run_id == run_id]
        if identifier:
            where.append(states.c.identifier == identifier)
        if statuses:
            where.append(states.c.status.in_(statuses))
        q = (
            select(states)
            .where(*where)
            .order_by(states.c.created_at, states.c.branch, states.c.id)
            .offset((page - 1) * size)
            .limit(size)
        )
        with self.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(states).where(*where)).scalar() or 0)
            return total, [dict(r) for r in conn.execute(q).mappings()]

    def retry_chain(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Every attempt of one state's lineage (what it retried, what retried it), oldest first."""
        chain = [state]
        with self.engine.connect() as conn:
            back = state
            for _ in range(100):
                if not back.get("retry_of"):
                    break
                row = conn.execute(select(states).where(states.c.id == back["retry_of"])).mappings().first()
                if row is None:
                    break
                back = dict(row)
                chain.insert(0, back)
            forward = state
            for _ in range(100):
                row = conn.execute(select(states).where(states.c.retry_of == forward["id"])).mappings().first()
                if row is None:
                    break
                forward = dict(row)
                chain.append(forward)
        return chain

    def store_writes_of(self, state_id: str) -> list[dict[str, Any]]:
        """The store keys one state wrote when it completed (key, value, written_at), by key."""
        with self.engine.connect() as conn:
            return store_writes_of(conn, state_id)

    def store_of(self, run_id: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(store.c.key, store.c.value).where(store.c.run_id == run_id).limit(1000))
            return dict(rows.all())

    # -- metrics ------------------------------------------------------------------
    def run_totals(self) -> list[dict[str, Any]]:
        """Runs by namespace, graph and status, and how many of them started."""
        q = select(
            runs.c.namespace,
            runs.c.graph_name,
            runs.c.status,
            func.count().label("n"),
            func.count(runs.c.started_at).label("started"),
        ).group_by(runs.c.namespace, runs.c.graph_name, runs.c.status)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def state_totals(self) -> list[dict[str, Any]]:
        """States by namespace, node and status, with their retries, re-sends and delayed releases."""
        q = select(
            states.c.namespace,
            states.c.node_name,
            states.c.status,
            func.count().label("n"),
            _count_if(states.c.retry_of.is_not(None)).label("retries"),
            func.coalesce(func.sum(case((states.c.attempts > 1, states.c.attempts - 1), else_=0)), 0).label("resends"),
        ).group_by(states.c.namespace, states.c.node_name, states.c.status)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def released_totals(self, max_countdown: float) -> list[dict[str, Any]]:
        """States whose delay was too long for the broker and that beat released when due, by node."""
        long_wait = (states.c.due_at - states.c.dispatched_at) > max_countdown
        q = (
            select(states.c.namespace, states.c.node_name, func.count().label("n"))
            .where(long_wait, states.c.status != S.CREATED.value)
            .group_by(states.c.namespace, states.c.node_name)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def latency_histograms(self) -> dict[str, list[dict[str, Any]]]:
        """Two histograms per (namespace, node): queued->started (`started_at - due_at`) and execution time
        (`updated_at - started_at` of states that finished); bucket counts cumulative, as Prometheus wants."""
        started = states.c.started_at.is_not(None)
        wait = (
            func.greatest(states.c.started_at - states.c.due_at, 0)
            if self._postgres
            else (func.max(states.c.started_at - states.c.due_at, 0))
        )
        run = states.c.updated_at - states.c.started_at
        result: dict[str, list[dict[str, Any]]] = {}
        for name, value, extra in (
            ("wait", wait, [started]),
            ("execution", run, [started, states.c.status.in_(_TERMINAL_EXECUTED)]),
        ):
            columns = [_count_if(value <= b).label(f"b{i}") for i, b in enumerate(LATENCY_BUCKETS)]
            q = (
                select(
                    states.c.namespace,
                    states.c.node_name,
                    func.count().label("count"),
                    func.coalesce(func.sum(value), 0.0).label("sum"),
                    *columns,
                )
                .where(*extra)
                .group_by(states.c.namespace, states.c.node_name)
            )
            with self.engine.connect() as conn:
                result[name] = [dict(r) for r in conn.execute(q).mappings()]
        return result

    @property
    def _postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def queue_names(self) -> list[tuple[str, str]]:
        """(namespace, node name) of every registered node: each has its own queue to measure."""
        q = select(nodes.c.namespace, nodes.c.node_name)
        with self.engine.connect() as conn:
            return sorted({(r[0], r[1]) for r in conn.execute(q)})


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
