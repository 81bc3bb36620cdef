"""Alembic migrations: `exo-celery db upgrade` builds the ledger the models describe, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

from exo_celery.ledger.migrations import HEAD, VERSION_TABLE, known_revisions
from exo_celery.ledger.tables import metadata
from exo_celery.settings import load_settings

from .support import ROOT, check_postgres, create_database, drop_database, require


def cli(database_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env.update(EXO_DATABASE_URL=database_url, EXO_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def upgrade(database_url: str, home: Path) -> dict[str, Any]:
    done = cli(database_url, home, "db", "upgrade", "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def schema(url: str) -> dict[str, Any]:
    """Tables, columns (type, nullability), primary keys, unique constraints and indexes, as reflected."""
    engine = create_engine(load_settings(database_url=url).ledger_url)
    try:
        found = inspect(engine)
        result: dict[str, Any] = {}
        for table in sorted(t for t in found.get_table_names() if t != VERSION_TABLE):
            result[table] = {
                "columns": {c["name"]: (str(c["type"]), c["nullable"]) for c in found.get_columns(table)},
                "primary_key": sorted(found.get_pk_constraint(table)["constrained_columns"]),
                "unique": sorted(
                    (u.get("name") or "", tuple(u["column_names"])) for u in found.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in found.get_indexes(table)
                    if not i.get("duplicates_constraint")
                ),
            }
        return result
    finally:
        engine.dispose()


def models_schema() -> dict[str, Any]:
    """What the SQLModel metadata declares, in the terms `schema` can check by name."""
    result: dict[str, Any] = {}
    for name, table in metadata.tables.items():
        uniques = {
            tuple(c.name for c in u.columns) for u in table.constraints if u.__class__.__name__ == "UniqueConstraint"
        }
        uniques |= {(c.name,) for c in table.columns if c.unique}
        result[name] = {
            "columns": sorted(c.name for c in table.columns),
            "nullable": sorted(c.name for c in table.columns if c.nullable),
            "primary_key": sorted(c.name for c in table.primary_key.columns),
            "unique": sorted(uniques),
            "indexes": sorted((i.name, tuple(c.name for c in i.columns)) for i in table.indexes),
        }
    return result


def assert_matches_models(found: dict[str, Any]) -> None:
    expected = models_schema()
    assert sorted(found) == sorted(expected)
    for name, want in expected.items():
        got = found[name]
        assert sorted(got["columns"]) == want["columns"], name
        assert sorted(c for c, (_, nullable) in got["columns"].items() if nullable) == want["nullable"], name
        assert got["primary_key"] == want["primary_key"], name
        assert sorted(cols for _, cols in got["unique"]) == want["unique"], name
        assert sorted((n, cols) for n, cols, _ in got["indexes"]) == want["indexes"], name


def assert_no_drift(url: str) -> None:
    """Alembic's own autogenerate comparison finds nothing to change."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(load_settings(database_url=url).ledger_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


@pytest.fixture
def pg_databases() -> Iterator[list[str]]:
    require("PostgreSQL", check_postgres)
    urls: list[str] = []
    try:
        urls.extend(create_database() for _ in range(2))
        yield urls
    finally:
        for url in urls:
            drop_database(url)


def test_head_constant_is_the_newest_revision() -> None:
    assert known_revisions()[-1] == HEAD


def test_db_upgrade_builds_the_postgres_ledger_the_models_describe_and_repeating_it_is_a_no_op(
    pg_databases: list[str], tmp_path: Path
) -> None:
    url, reference = pg_databases
    first = upgrade(url, tmp_path)
    assert first["revision"] == HEAD and first["before"] is None and first["changed"] is True
    assert first["ledger"].endswith("/" + url.rsplit("/", 1)[1])
    found = schema(url)
    assert_matches_models(found)
    assert_no_drift(url)

    # Exactly what SQLModel's create_all builds, down to constraint and index names and column types.
    engine = create_engine(load_settings(database_url=reference).ledger_url)
    metadata.create_all(engine)
    engine.dispose()
    assert found == schema(reference)

    again = upgrade(url, tmp_path)
    assert again == {**first, "before": HEAD, "changed": False}
    assert schema(url) == found
    current = cli(url, tmp_path, "db", "current")
    assert current.returncode == 0 and f"revision {HEAD} (up to date)" in current.stdout


def test_db_upgrade_builds_the_same_sqlite_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'ledger.db'}"
    first = upgrade(url, tmp_path)
    assert first["revision"] == HEAD and first["changed"] is True
    found = schema(url)
    assert_matches_models(found)
    assert_no_drift(url)
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    engine = create_engine(reference)
    metadata.create_all(engine)
    engine.dispose()
    assert found == schema(reference)
    assert upgrade(url, tmp_path)["changed"] is False


def test_a_ledger_made_before_migrations_is_adopted_not_recreated(pg_databases: list[str], tmp_path: Path) -> None:
    url = pg_databases[0]
    engine = create_engine(load_settings(database_url=url).ledger_url)
    baseline = ("exo_graphs", "exo_nodes", "exo_runs", "exo_states", "exo_scopes", "exo_store")  # revision 0001's
    metadata.create_all(engine, tables=[metadata.tables[t] for t in baseline])  # how exo_celery made them before
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO exo_store (run_id, key, value) VALUES ('r1', 'k', 'kept')"
        )  # data survives the adoption
    engine.dispose()
    result = upgrade(url, tmp_path)
    assert result["revision"] == HEAD
    engine = create_engine(load_settings(database_url=url).ledger_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT value FROM exo_store").scalar() == "kept"
    engine.dispose()


CONCURRENT_FIRST_USE = """
import sys
from exo_celery.ledger.db import get_engine
from exo_celery.ledger.migrations import current_revision
print(current_revision(get_engine(sys.argv[1])))
"""


def test_processes_opening_a_new_ledger_at_once_migrate_it_once(pg_databases: list[str], tmp_path: Path) -> None:
    """Workers starting together each migrate on first use; the lock makes that safe on both databases."""
    urls = [pg_databases[0], f"sqlite:///{tmp_path / 'race.db'}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_FIRST_USE, load_settings(database_url=url).ledger_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in urls
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == [HEAD] * 4
    for url in urls:
        assert_matches_models(schema(url))
