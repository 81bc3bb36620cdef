"""New runs: the graph version a run is made of, and inserting it with its store and root state atomically.

On PostgreSQL a run, its store and its root are one statement that names the
version this process saw last and inserts nothing if a newer one was stored
since ("stale": the caller builds the run of the newest version and tries again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..engine import NewState
from ..errors import NotFoundError
from ..status import RunStatus
from . import clock
from .db import get_engine, is_postgres
from .direct import direct
from .rows import state_values
from .statements import INSERT_RUN, INSERT_RUN_WITH_ROOT, INSERT_STATES, INSERT_STORE, LATEST_VERSION
from .tables import runs

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


class RunInserts:
    """Which version a new run is made of, and inserting it (`Repo.version_for_run`, `Repo.create_run`)."""

    def __init__(self, url: str, *, worker: bool = False) -> None:
        self.url = url
        self.worker = worker
        self.postgres = is_postgres(url)
        self._seen_versions: dict[tuple[str, str], int] = {}

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, worker=self.worker)

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
                # A connection the server drops between the pool's ping and the statement fails once.
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
                outcome = self._insert_run(namespace, graph_name, version, run, cron_key, attempt > 0, idempotency_key)
                break
            except DBAPIError as exc:
                # A connection the server drops between the pool's ping and the statement fails
                # once, and the pool replaces it. The retry keeps the run id, so an insert that got
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
            return "inserted" if direct(INSERT_RUN_WITH_ROOT).first(get_engine(self.url), params) else "stale"
        except IntegrityError:
            if retried and self._run_exists(run.run_id):
                return "inserted"
            if cron_key is None and idempotency_key is None:
                raise
            return "duplicate"

    def _run_exists(self, run_id: str) -> bool:
        with get_engine(self.url, autocommit=True).connect() as conn:
            return conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None

    @staticmethod
    def _latest_version(conn: Connection, namespace: str, graph_name: str) -> int:
        version: int | None = conn.execute(LATEST_VERSION, {"p_namespace": namespace, "p_name": graph_name}).scalar()
        if version is None:
            raise NotFoundError(f"graph {graph_name!r} does not exist in namespace {namespace!r}")
        return version
