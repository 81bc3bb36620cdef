"""Engines: one per process and URL, the ledger migrated on first write, SQLite tuned for several processes.

Reads never migrate (issue 13, item 14): `get_engine(url, migrate=False)` opens an existing
ledger only, and says which one has no schema instead of creating it. `translate_errors` turns
driver errors into one-line `ExoError`s naming the ledger (host or path, never a password).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool

from ..errors import ConfigError, LedgerUnavailable

UNREACHABLE: tuple[type[OperationalError], type[InterfaceError]] = (OperationalError, InterfaceError)
"""SQLAlchemy's errors for a database that is unreachable or failing (a restart, a dropped connection): callers
outside the ledger catch these without importing SQLAlchemy."""

_engines: dict[tuple[int, str, bool, bool], Engine] = {}
_ready: set[tuple[int, str]] = set()  # (pid, url) of ledgers this process migrated or found current
_bare: dict[tuple[int, str, str], Engine] = {}
_lock = threading.Lock()

WORKER_APPLICATION_NAME = "exo_celery worker"  # what pg_stat_activity shows for a worker's connections
MAX_POOL_SIZE = 16  # connections a worker process keeps for its transitions, whatever its concurrency
# Executions at once in this process, once a worker said so (`size_worker_pools`); None: not a worker.
_executions: int | None = None


def size_worker_pools(executions: int) -> None:
    """Size this process's ledger pools for `executions` node executions at once (call before engines open).

    A worker process then holds at most min(executions, MAX_POOL_SIZE) + 1 connections for transitions
    (the one extra is the lease keeper's) and at most 2 for everything else (store reads, templates):
    a `threads` pool of 100 waits a few milliseconds for a connection instead of opening 100, and a prefork
    child (1 execution) holds one. A forked child inherits the size its parent set.
    """
    global _executions
    _executions = max(1, executions)


def without_password(url: str) -> str:
    """A URL (ledger or broker) with its password replaced by ***, for messages and logs."""
    if "://" not in url or "@" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[-1]


def ledger_name(url: str) -> str:
    """Which ledger a URL names, for messages: a SQLite file's path, else the URL without its password."""
    if url.startswith("sqlite"):
        return url.split("///", 1)[-1] or ":memory:"
    try:
        return make_url(url).set(drivername=make_url(url).get_backend_name()).render_as_string(hide_password=True)
    except Exception:
        return without_password(url)


def _cause(exc: BaseException) -> str:
    """The driver's own words, on one line, without SQLAlchemy's background link."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    return text.replace("connection failed: ", "", 1)[:300]


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Raise LedgerUnavailable (database unreachable or failing) or ConfigError (an unusable URL) instead of
    SQLAlchemy's and the driver's own errors, in one line that names the ledger."""
    try:
        yield
    except UNREACHABLE as exc:
        raise LedgerUnavailable(f"ledger {ledger_name(url)} is unavailable: {_cause(exc)}") from None
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"ledger URL {ledger_name(url)} cannot be used: {_cause(exc)}") from None
    except ModuleNotFoundError as exc:  # a driver that is not installed
        raise ConfigError(f"ledger URL {ledger_name(url)} needs a driver that is not installed: {exc}") from None


def _tune_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling is off so that every transaction can
    # take the write lock up front (BEGIN IMMEDIATE): with several worker
    # processes a deferred transaction could fail to upgrade its lock.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_postgres(url: str) -> bool:
    """True for a PostgreSQL ledger URL (some transitions take fewer statements there)."""
    return url.startswith("postgresql")


def get_engine(url: str, *, worker: bool = False, autocommit: bool = False, migrate: bool = True) -> Engine:
    """The engine for `url` in this process (a forked worker child gets its own).

    `migrate=False` is for reads: the ledger must exist at the current revision already (else
    LedgerUnavailable says which ledger and why); nothing is created, not even a SQLite file.

    `worker=True` gives the engine for state transitions in workers and beat: on PostgreSQL it
    commits without waiting for the WAL flush (`synchronous_commit=off`) and skips the per-checkout
    ping. A database crash can then forget the last fraction of a second of transitions; those states
    are still QUEUED with a lease in the recovered ledger and beat re-sends them, so effects stay
    exactly-once (the node may run again, as with any at-least-once delivery). A lost connection is
    retried by the worker.

    `autocommit=True` gives, on PostgreSQL, the same engine and pool with connections in autocommit
    mode, for transitions that are one statement (no BEGIN and COMMIT round trips). On SQLite it is
    the ordinary engine.
    """
    autocommit = autocommit and not url.startswith("sqlite")
    key = (os.getpid(), url, worker, autocommit)
    ready = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is not None and ready in _ready:
        return engine
    if autocommit:
        get_engine(url, worker=worker, migrate=migrate)  # migrates (or checks) the ledger first
    elif not migrate and engine is None:
        _check_exists(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            if autocommit:
                # The same pool as the ordinary engine (so autocommitted statements take no extra
                # connections); psycopg switches a connection to autocommit without a round trip.
                # Its one user outside workers, `Repo.create_run`, retries a dropped connection itself.
                engine = get_engine(url, worker=worker).execution_options(isolation_level="AUTOCOMMIT")
            else:
                engine = _create(url, worker, make_folder=migrate)
            _engines[key] = engine
        if ready not in _ready and not autocommit:
            if migrate:
                _create_tables(engine)
            else:
                _check_schema(engine, url)
            _ready.add(ready)
    return engine


def bare_engine(url: str) -> Engine:
    """A PostgreSQL engine holding no idle connection, for statements that need no schema (the ledger's
    clock): nothing is created, migrated or checked, and a read-only command stays read-only."""
    key = (os.getpid(), url, "bare")
    engine = _bare.get(key)
    if engine is None:
        target, _ = pgbouncer_url(url)
        engine = _bare.setdefault(key, create_engine(target, poolclass=NullPool))
    return engine


def _check_exists(url: str) -> None:
    """A read of a SQLite ledger that does not exist says so (connecting would create the file)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not os.path.exists(path):
            raise LedgerUnavailable(
                f"no ledger at {path}: the file does not exist, and reading does not create one "
                "(start a worker or run `exo-celery db upgrade`, or set EXO_HOME / EXO_DATABASE_URL to the ledger)"
            )


def _check_schema(engine: Engine, url: str) -> None:
    from .migrations import HEAD, current_revision, known_revisions

    revision = current_revision(engine)
    if revision is None:
        raise LedgerUnavailable(
            f"ledger {ledger_name(url)} has no exo_celery schema: nothing was created, since reading does not "
            "migrate (start a worker or run `exo-celery db upgrade`, or point EXO_DATABASE_URL at the ledger)"
        )
    if revision != HEAD and revision in known_revisions():
        raise LedgerUnavailable(
            f"ledger {ledger_name(url)} is at schema revision {revision}, older than this exo_celery's {HEAD}: "
            "run `exo-celery db upgrade` (or start a worker, which upgrades it)"
        )


def _create(url: str, worker: bool = False, make_folder: bool = True) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if make_folder and path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _tune_sqlite(engine)
    else:
        target, pgbouncer = pgbouncer_url(url)
        engine = create_engine(target, **_postgres_options(worker, pgbouncer))
    return engine


def open_engine(url: str, *, make_folder: bool = False) -> Engine:
    """A new engine for `url`, set up as the ledger's own are (SQLite tuned, PgBouncer's flag honoured), for
    one-off commands such as `exo-celery db upgrade`: it neither migrates nor is kept, so the caller disposes it."""
    return _create(url, make_folder=make_folder)


def _pool_options(worker: bool) -> dict[str, Any]:
    if _executions is None:
        return {"pool_size": 5, "max_overflow": 10}
    return {"pool_size": min(_executions, MAX_POOL_SIZE) if worker else 1, "max_overflow": 1}


def _connect_args(**args: Any) -> dict[str, Any]:
    if _executions is not None:
        args["application_name"] = WORKER_APPLICATION_NAME
    return args


def pgbouncer_url(url: str) -> tuple[str, bool]:
    """The URL without its `pgbouncer=true` query flag, and whether it was set.

    Behind PgBouncer in transaction mode, consecutive transactions of one client connection may run on
    different server connections: session settings given at connect time (`options`) are refused or lost,
    and server-side prepared statements are not found again. With the flag, exo_celery sends no session
    options and prepares no statements (psycopg's `prepare_threshold=None`); see docs/execution.md.
    """
    parsed = make_url(url)
    flag = parsed.query.get("pgbouncer")
    if flag is None:
        return url, False
    value = flag[-1] if isinstance(flag, tuple) else flag
    return parsed.difference_update_query(["pgbouncer"]).render_as_string(hide_password=False), value.lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _postgres_options(worker: bool, pgbouncer: bool = False) -> dict[str, Any]:
    if pgbouncer:
        # No session options and no prepared statements (each statement is planned for its values); see
        # pgbouncer_url.
        connect_args = _connect_args(prepare_threshold=None)
        return {"pool_pre_ping": not worker, **_pool_options(worker), "connect_args": connect_args}
    # psycopg prepares a statement after its fifth run, and PostgreSQL may then keep a generic plan.
    # Every hot statement finds its rows by key (a state by id, a run or scope by id), so a generic plan
    # chosen while the ledger was small stays right as it grows, and saves the planning: half the
    # server's time of a fan-out branch (BENCHMARKS.md, "Generic plans").
    if worker:
        options = "-c synchronous_commit=off"
        return {**_pool_options(True), "connect_args": _connect_args(options=options)}
    return {"pool_pre_ping": True, **_pool_options(False), "connect_args": _connect_args()}


def _create_tables(engine: Engine) -> None:
    """Create or upgrade the ledger by running its Alembic migrations (a no-op once at the newest revision).

    The upgrade itself is serialized across processes (advisory lock / BEGIN IMMEDIATE); the retries
    cover a database that is still starting or a lock wait that timed out.
    """
    from .migrations import ensure_current

    for attempt in range(5):
        try:
            ensure_current(engine)
            return
        except DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def forget_engines() -> None:
    """Drop this process's engines (after fork, or in tests)."""
    for key in [k for k in _engines if k[0] == os.getpid()]:
        _engines.pop(key).dispose()
    for ready in [r for r in _ready if r[0] == os.getpid()]:
        _ready.discard(ready)
