"""Reads and writes of graphs, registered nodes, runs and the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, case, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..errors import ConflictError
from ..status import StateStatus
from . import clock
from .db import get_engine, is_postgres
from .runs import InsertResult, NewRun, RunInserts
from .statements import LATEST_VERSION
from .sweeps import purge_finished_runs
from .tables import graphs, nodes, runs, states, store


class Repo:
    """Graphs, nodes, runs and store: every statement outside state transitions."""

    def __init__(self, url: str, *, worker: bool = False) -> None:
        self.url = url
        self.worker = worker  # in a worker: share the transitions' pool (one bounded set of connections)
        self.postgres = is_postgres(url)
        self.inserts = RunInserts(url, worker=worker)

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, worker=self.worker)

    @property
    def reader(self) -> Engine:
        """The engine for reads: it never creates or migrates a ledger (LedgerUnavailable says why)."""
        return get_engine(self.url, migrate=False)

    # -- nodes -----------------------------------------------------------
    def register_nodes(self, namespace: str, schemas: dict[str, dict[str, Any]], runtime_name: str) -> None:
        """Record (or refresh) the schemas of the nodes a worker serves."""
        now = clock.now(self.url)
        with self.engine.begin() as conn:
            for name, schema in schemas.items():
                found = conn.execute(
                    update(nodes)
                    .where(nodes.c.namespace == namespace, nodes.c.node_name == name)
                    .values(schema=schema, runtime_name=runtime_name, updated_at=now)
                ).rowcount
                if not found:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                insert(nodes).values(
                                    namespace=namespace,
                                    node_name=name,
                                    schema=schema,
                                    runtime_name=runtime_name,
                                    updated_at=now,
                                )
                            )
                    except IntegrityError:
                        pass  # another worker registered it at the same moment

    def registry(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Schemas of the given (namespace, node_name) pairs that are registered."""
        if not keys:
            return {}
        names = {k[1] for k in keys}
        with self.engine.connect() as conn:
            rows = conn.execute(select(nodes).where(nodes.c.node_name.in_(names))).mappings()
            return {
                (r["namespace"], r["node_name"]): r["schema"] for r in rows if (r["namespace"], r["node_name"]) in keys
            }

    # -- graphs ----------------------------------------------------------
    def save_graph(
        self,
        namespace: str,
        name: str,
        template: dict[str, Any],
        secrets_cipher: str,
        same_secrets: Callable[[str], bool] | None = None,
    ) -> int:
        """Store a new version of a template; returns its version number.

        When the latest version has the same template and `same_secrets(its cipher)` is true (a
        Fernet cipher differs each time, so only the caller, who holds the key, can compare), no
        version is added and the latest one is returned: repeating an upsert changes nothing.
        """
        for _ in range(10):
            with self.engine.begin() as conn:
                latest = conn.execute(
                    select(graphs.c.version, graphs.c.template, graphs.c.secrets_cipher)
                    .where(graphs.c.namespace == namespace, graphs.c.name == name)
                    .order_by(graphs.c.version.desc())
                    .limit(1)
                ).first()
                if latest is not None and same_secrets is not None:
                    if latest.template == template and same_secrets(latest.secrets_cipher):
                        return int(latest.version)
                version = (latest.version if latest is not None else 0) + 1
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(graphs).values(
                                namespace=namespace,
                                name=name,
                                version=version,
                                template=template,
                                secrets_cipher=secrets_cipher,
                                updated_at=clock.now(self.url),
                            )
                        )
                    return version
                except IntegrityError:
                    continue  # a concurrent upsert took this version number
        raise ConflictError(f"could not store graph {name!r}: too many concurrent upserts")

    def latest_version(self, namespace: str, name: str) -> int | None:
        """The newest version number of a graph (cheap: no template), or None."""
        with self.reader.connect() as conn:
            version: int | None = conn.execute(LATEST_VERSION, {"p_namespace": namespace, "p_name": name}).scalar()
            return version

    def load_graph(self, namespace: str, name: str, version: int | None = None) -> dict[str, Any] | None:
        """A template row (latest version unless given), or None."""
        q = select(graphs).where(graphs.c.namespace == namespace, graphs.c.name == name)
        q = (
            q.where(graphs.c.version == version)
            if version is not None
            else q.order_by(graphs.c.version.desc()).limit(1)
        )
        with self.reader.connect() as conn:
            row = conn.execute(q).mappings().first()
            return dict(row) if row else None

    def graph_times(self, namespace: str, name: str, version: int) -> tuple[float, float] | None:
        """(created_at, updated_at) of a graph: its first version's time and `version`'s, or None."""
        q = select(
            func.min(graphs.c.updated_at), func.max(case((graphs.c.version == version, graphs.c.updated_at)))
        ).where(graphs.c.namespace == namespace, graphs.c.name == name)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None or row[0] is None or row[1] is None else (float(row[0]), float(row[1]))

    def latest_graphs(self) -> list[dict[str, Any]]:
        """The latest version of every graph (beat reads their triggers)."""
        latest = (
            select(graphs.c.namespace, graphs.c.name, func.max(graphs.c.version).label("version"))
            .group_by(graphs.c.namespace, graphs.c.name)
            .subquery()
        )
        q = select(graphs).join(
            latest,
            (graphs.c.namespace == latest.c.namespace)
            & (graphs.c.name == latest.c.name)
            & (graphs.c.version == latest.c.version),
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # -- runs ------------------------------------------------------------
    def version_for_run(self, namespace: str, graph_name: str) -> int:
        """The version a new run of a graph is made of (`runs.RunInserts.version_for_run`)."""
        return self.inserts.version_for_run(namespace, graph_name)

    def create_run(
        self,
        namespace: str,
        graph_name: str,
        version: int,
        run: NewRun,
        cron_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> InsertResult:
        """Insert a run of `version` with its store and root state, atomically (`runs.RunInserts.create_run`):
        "inserted", "duplicate" (its cron or idempotency key was used) or "stale" (a newer version exists)."""
        return self.inserts.create_run(namespace, graph_name, version, run, cron_key, idempotency_key)

    def run_by_key(self, namespace: str, idempotency_key: str) -> dict[str, Any] | None:
        """The run a trigger with this idempotency key made in `namespace`, if any."""
        q = select(runs).where(runs.c.namespace == namespace, runs.c.idempotency_key == idempotency_key)
        with self.reader.connect() as conn:
            row = conn.execute(q).mappings().first()
            return dict(row) if row else None

    def waiting_state(self, run_id: str, identifier: str) -> dict[str, Any] | None:
        """A QUEUED state of `identifier` in the run that no worker ever claimed (its message may be lost)."""
        q = select(states).where(
            states.c.run_id == run_id,
            states.c.identifier == identifier,
            states.c.status == StateStatus.QUEUED.value,
            states.c.attempts == 0,
            states.c.lease_until.is_(None),
        )
        with self.reader.connect() as conn:
            row = conn.execute(q.limit(1)).mappings().first()
            return dict(row) if row else None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            return dict(row) if row else None

    def run_with_counts(self, run_id: str) -> tuple[dict[str, Any] | None, dict[str, int]]:
        """A run and its states counted by status, read on one connection: on PostgreSQL an autocommit
        one, so two round trips (no ping, BEGIN or ROLLBACK); what a waiter reads once woken."""
        counts_q = select(states.c.status, func.count()).where(states.c.run_id == run_id).group_by(states.c.status)
        self.reader  # noqa: B018  (a read never creates a ledger: this checks it exists, once per process)
        for attempt in range(2):
            try:
                with get_engine(self.url, autocommit=True).connect() as conn:
                    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
                    if row is None:
                        return None, {}
                    return dict(row), {status: int(n) for status, n in conn.execute(counts_q).all()}
            except DBAPIError as exc:
                # A connection dropped between the pool's ping and the statement fails once (reads: retry).
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def state_counts(self, run_id: str) -> dict[str, int]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(states.c.status, func.count()).where(states.c.run_id == run_id).group_by(states.c.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def list_runs(
        self,
        namespace: str,
        graph_name: str | None,
        limit: int,
        *,
        statuses: list[str] | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first; optionally only those in `statuses` or created at or after `since`."""
        q = select(runs).where(runs.c.namespace == namespace)
        if graph_name is not None:
            q = q.where(runs.c.graph_name == graph_name)
        if statuses:
            q = q.where(runs.c.status.in_(statuses))
        if since is not None:
            q = q.where(runs.c.created_at >= since)
        q = q.order_by(runs.c.created_at.desc()).limit(limit)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def list_states(self, run_id: str) -> list[dict[str, Any]]:
        q = select(states).where(states.c.run_id == run_id).order_by(states.c.created_at, states.c.branch)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def get_state(self, state_id: str) -> dict[str, Any] | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(states).where(states.c.id == state_id)).mappings().first()
            return dict(row) if row else None

    def read_store(self, run_id: str) -> dict[str, str]:
        with self.reader.connect() as conn:
            return dict(conn.execute(select(store.c.key, store.c.value).where(store.c.run_id == run_id)).all())

    # -- retention -------------------------------------------------------
    def purge_finished_runs(self, older_than: float, batch: int = 500, max_states: int = 20_000) -> int:
        """Delete runs finished before `older_than` (at most `batch` runs and about `max_states` state
        rows), with their states, scopes, store and store writes; returns the runs deleted."""
        # Retention is a sweep: sweeps.py owns it.
        return purge_finished_runs(self.engine, older_than, batch, max_states)


def outputs_of(conn: Connection, state_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Outputs of the given states, by id."""
    if not state_ids:
        return {}
    rows = conn.execute(select(states.c.id, states.c.outputs).where(states.c.id.in_(state_ids))).all()
    return {sid: out or {} for sid, out in rows}
