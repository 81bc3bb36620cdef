"""Alembic migrations of the ledger, runnable from code.

`upgrade(engine)` brings a ledger to the newest revision. exo_celery calls it the
first time a process opens a ledger (so a fresh database just works), and
`exo-celery db upgrade` calls it on demand (for deployments that migrate in a
separate step). The revision is kept in `exo_alembic_version`, not Alembic's
default `alembic_version`, so an application's own migrations in the same
database are left alone.

Two processes upgrading at once are safe: the upgrade runs in one transaction
that first takes a PostgreSQL advisory lock (on SQLite, the database write lock
of `BEGIN IMMEDIATE`), and the second process then finds the work done.

For the Alembic command line (e.g. `alembic upgrade head --sql` for a DBA), use
an `alembic.ini` with `script_location = exo_celery.ledger:migrations` and
`sqlalchemy.url = <the ledger URL>`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

HEAD = "0010_store_writes"  # the newest revision in versions/ (a test checks they agree)
BASELINE = "0001"  # the schema exo_celery created with `create_all` before it had migrations
VERSION_TABLE = "exo_alembic_version"
LOCK_ID = 0x65786F5F6C6564  # any fixed bigint: the key of the PostgreSQL advisory lock
HERE = Path(__file__).resolve().parent

log = logging.getLogger("exo_celery.ledger")


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    """An Alembic `Config` for these migrations, on an open connection or a URL."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine | Connection) -> str | None:
    """The ledger's revision, or None when it was never migrated."""
    if isinstance(engine, Connection):
        return _read_revision(engine)
    with engine.connect() as conn:
        return _read_revision(conn)


def _read_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    value = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return None if value is None else str(value)


def known_revisions() -> list[str]:
    """Every revision in versions/, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def ensure_current(engine: Engine) -> None:
    """Upgrade unless the ledger is at HEAD already (the cheap check every process makes once)."""
    revision = current_revision(engine)
    if revision == HEAD:
        return
    if revision is not None and revision not in known_revisions():
        # A newer exo_celery migrated this ledger: its schema only grows, so keep going.
        log.warning("ledger is at revision %s, newer than this exo_celery knows (%s)", revision, HEAD)
        return
    upgrade(engine)


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Create or upgrade the ledger to `revision` in one locked transaction; returns the revision reached."""
    from alembic import command

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_ID})
        before = _read_revision(conn)
        config = alembic_config(conn)
        if before is None and inspect(conn).has_table("exo_states"):
            command.stamp(config, BASELINE)  # tables made by create_all before migrations existed
        command.upgrade(config, revision)
        after = _read_revision(conn)
    if after != before:
        log.info("ledger upgraded from revision %s to %s", before or "(empty)", after)
    return after
