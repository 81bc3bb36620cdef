"""Reads and writes of graphs, registered nodes, runs and the store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, case, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..engine import NewState
from ..errors import NotFoundError
from ..status import RunStatus, StateStatus
from . import clock
from .db import get_engine, is_postgres
from .statements import INSERT_RUN, INSERT_RUN_WITH_ROOT, INSERT_STATES, INSERT_STORE, LATEST_VERSION
from .sweeps import purge_finished_runs
from .tables import graphs, nodes, runs, states, store


def state_values(s: NewState, run: Mapping[str, Any], now: float, due_at: float) -> dict[str, Any]:
    """The row of a planned state; `run` gives run_id, graph_namespace, graph_name, graph_version."""
    return {
        "id": s.id,
        "run_id": run["run_id"],
        "namespace": s.namespace,
        "graph_namespace": run["graph_namespace"],
        "graph_name": run["graph_name"],
        "graph_version": run["graph_version"],
        "identifier": s.identifier,
        "node_name": s.node_name,
        "status": s.status.value,
        "inputs": s.inputs,
        "outputs": s.outputs,
        "error": None,
        "data": None,
        "retry_count": s.retry_count,
        "parents": s.parents,
        "scopes": s.scopes,
        "branch": s.branch,
        "execution_id": s.execution_id,
        "fingerprint": s.fingerprint,
        "retry_of": s.retry_of,
        "due_at": due_at,
        "lease_token": None,
        "lease_until": None,
        "dispatched_at": now,
        "started_at": None,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


InsertResult = Literal["inserted", "duplicate", "stale"]
"""What inserting a run did (`Repo.create_run`)."""


@dataclass
class NewRun:
    """A run to insert: its id, root state, full store and when the root is due."""

    run_id: str
    root: NewState
    store_values: dict[str, str]
    due_at: float


def _run_row(
    run: NewRun,
    namespace: str,
    graph_name: str,
    version: int,
    cron_key: str | None,
    now: float,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "namespace": namespace,
        "graph_name": graph_name,
        "graph_version": version,
        "status": RunStatus.PENDING.value,
        "outstanding": 1,
        "failed": 0,
        "cron_key": cron_key,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
    }


def _root_row(run: NewRun, run_row: dict[str, Any], now: float) -> dict[str, Any]:
    context = {
        "run_id": run.run_id,
        "graph_namespace": run_row["namespace"],
        "graph_name": run_row["graph_name"],
        "graph_version": run_row["graph_version"],
    }
    return state_values(run.root, context, now, run.due_at)


class Repo:
    """Graphs, nodes, runs and store: every statement outside state transitions."""

    def __init__(self, url: str, *, worker: bool = False) -> None:
        self.url = url
        self.worker = worker  # in a worker: share the transitions' pool (one bounded set of connections)
        self.postgres = is_postgres(url)
        self._seen_versions: dict[tuple[str, str], int] = {}

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
        raise RuntimeError(f"could not store graph {name!r}: too many concurrent upserts")

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
        """The version a new run of a graph is made of: its newest (on PostgreSQL, the one this repo saw
        last, which `create_run` checks is still the newest). NotFoundError if the graph has none."""
        if not self.postgres:
            with self.engine.connect() as conn:
                return self._latest_version(conn, namespace, graph_name)
        seen = self._seen_versions.get((namespace, graph_name))
        if seen is not None:
            return seen
        for attempt in range(2):
            try:
                with get_engine(self.url, autocommit=True).connect() as conn:
                    return self._latest_version(conn, namespace, graph_name)
            except DBAPIError as exc:
                # That pool does not ping on checkout: a connection the server dropped fails once.
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def create_run(
        self,
        namespace: str,
        graph_name: str,
        version: int,
        run: NewRun,
        cron_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> InsertResult:
        """Insert a run of `version` of a graph, with its store and its root state, atomically.

        "inserted"; "duplicate" when `cron_key` was already used (another beat fired it) or
        `idempotency_key` names a run of the namespace already; "stale" (PostgreSQL) when `version` is
        no longer the newest: nothing was inserted, build the run of the newest version and call again.
        """
        if self.postgres:
            return self._create_run_in_one_statement(namespace, graph_name, version, run, cron_key, idempotency_key)
        with self.engine.connect() as conn:
            conn.begin()
            now = clock.now(self.url)
            run_row = _run_row(run, namespace, graph_name, version, cron_key, now, idempotency_key)
            if cron_key is None and idempotency_key is None:
                conn.execute(INSERT_RUN, run_row)
            else:
                try:
                    with conn.begin_nested():  # a unique cron or idempotency key: losing the race is expected
                        conn.execute(INSERT_RUN, run_row)
                except IntegrityError:
                    conn.rollback()
                    return "duplicate"
            if run.store_values:
                conn.execute(
                    INSERT_STORE, [{"run_id": run.run_id, "key": k, "value": v} for k, v in run.store_values.items()]
                )
            conn.execute(INSERT_STATES, _root_row(run, run_row, now))
            conn.commit()
        return "inserted"

    def _create_run_in_one_statement(
        self,
        namespace: str,
        graph_name: str,
        version: int,
        run: NewRun,
        cron_key: str | None,
        idempotency_key: str | None = None,
    ) -> InsertResult:
        """PostgreSQL: one statement on an autocommit connection, atomic by itself. It names `version`,
        and inserts nothing if a newer one was stored since ("stale")."""
        key = (namespace, graph_name)
        for attempt in range(2):
            try:
                with get_engine(self.url, autocommit=True).connect() as conn:
                    outcome = self._insert_run(
                        conn, namespace, graph_name, version, run, cron_key, attempt > 0, idempotency_key
                    )
                break
            except DBAPIError as exc:
                # That pool does not ping on checkout: a connection the server dropped fails once and
                # the pool replaces them all. The retry keeps the run id, so an insert that got
                # through just before its connection died is found instead of made twice.
                if attempt or not exc.connection_invalidated:
                    raise
        if outcome == "stale":
            self._seen_versions.pop(key, None)  # a newer version was stored meanwhile
        else:
            self._seen_versions[key] = version
        return outcome

    def _insert_run(
        self,
        conn: Connection,
        namespace: str,
        graph_name: str,
        version: int,
        run: NewRun,
        cron_key: str | None,
        retried: bool,
        idempotency_key: str | None = None,
    ) -> InsertResult:
        """ "inserted", "stale" (a newer version exists) or "duplicate" (the cron or idempotency key was used)."""
        now = clock.now(self.url)
        run_row = _run_row(run, namespace, graph_name, version, cron_key, now, idempotency_key)
        params = {f"r_{k}": v for k, v in run_row.items()}
        params.update({f"s_{k}": v for k, v in _root_row(run, run_row, now).items()})
        params.update(p_store=run.store_values, p_namespace=namespace, p_name=graph_name)
        try:
            return "inserted" if conn.execute(INSERT_RUN_WITH_ROOT, params).first() is not None else "stale"
        except IntegrityError:
            if retried and conn.execute(select(runs.c.id).where(runs.c.id == run.run_id)).first() is not None:
                return "inserted"
            if cron_key is None and idempotency_key is None:
                raise
            return "duplicate"

    @staticmethod
    def _latest_version(conn: Connection, namespace: str, graph_name: str) -> int:
        version: int | None = conn.execute(LATEST_VERSION, {"p_namespace": namespace, "p_name": graph_name}).scalar()
        if version is None:
            raise NotFoundError(f"graph {graph_name!r} does not exist in namespace {namespace!r}")
        return version

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
                # That pool does not ping on checkout: a connection the server dropped fails once (reads: retry).
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
    def purge_finished_runs(self, older_than: float, batch: int = 500) -> int:
        """Delete runs finished before `older_than`, with their states, scopes, store and store writes."""
        return purge_finished_runs(self.engine, older_than, batch)  # retention is a sweep: sweeps.py owns it


def outputs_of(conn: Connection, state_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Outputs of the given states, by id."""
    if not state_ids:
        return {}
    rows = conn.execute(select(states.c.id, states.c.outputs).where(states.c.id.in_(state_ids))).all()
    return {sid: out or {} for sid, out in rows}


SUCCESS = StateStatus.SUCCESS.value
