"""Alembic environment of the ledger migrations.

Used by `exo_celery.ledger.migrations.upgrade` (which passes an open connection
in `config.attributes["connection"]`) and by the Alembic command line (which
gives `sqlalchemy.url`, or falls back to EXO_DATABASE_URL / the embedded default).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from exo_celery.ledger.db import pgbouncer_url
from exo_celery.ledger.migrations import VERSION_TABLE
from exo_celery.ledger.tables import metadata

config = context.config


def _url() -> str:
    from exo_celery.settings import load_settings

    # A plain postgresql:// URL means psycopg 3, as everywhere in exo_celery.
    return load_settings(database_url=config.get_main_option("sqlalchemy.url") or None).ledger_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=_url(), target_metadata=metadata, version_table=VERSION_TABLE, literal_binds=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = create_engine(pgbouncer_url(_url())[0])
        try:
            with engine.begin() as conn:
                _run(conn)
        finally:
            engine.dispose()
