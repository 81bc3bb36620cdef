"""Issue 13 items 13-15: bad configuration gives one clear ExoError, and nothing is written or created.

- 13: a trigger with a broker it cannot use (wrong AMQP password, a `reddis://` typo, nothing
  listening) raised after writing a PENDING run whose id was never shown; now it checks the broker
  first and writes nothing. `idempotency_key` makes a repeated trigger return the run it made.
- 14: read-only commands created the schema in whatever database they were pointed at, or a new
  SQLite ledger in the current folder; now they say which ledger has no schema.
- 15: a wrong database URL printed SQLAlchemy's OperationalError and its background link; the
  client raised it while the database was down. Now one line names the host and the cause.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from exo_celery import BrokerUnavailable, GraphNodeModel, LedgerUnavailable, StateManager, TriggerError

from ..support import (
    POSTGRES_ADMIN_URL,
    RABBITMQ_URL,
    ROOT,
    Stack,
    check_postgres,
    check_rabbitmq,
    create_database,
    drop_database,
    require,
    run,
    uid,
)
from .harness import Ledger

PASSWORD = "pw-that-must-not-show"


def cli(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    return subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and "sqlalche.me" not in done.stderr and PASSWORD not in done.stderr
    return lines[0]


def echo_graph(stack: Stack, ns: str) -> StateManager:
    from exo_celery.ledger.repo import Repo
    from exo_celery.node import node_schema
    from tests import nodes

    Repo(stack.settings().ledger_url).register_nodes(ns, {"Echo": node_schema(nodes.Echo)}, "bad-config-test")
    m = stack.manager(ns)
    run(m.upsert_graph("g", [GraphNodeModel(node_name="Echo", identifier="a", inputs={"text": "x"})]))
    return m


def test_a_trigger_with_an_unusable_broker_writes_nothing(fresh_pg: Stack) -> None:
    ns = uid("broker")
    echo_graph(fresh_pg, ns)
    ledger = Ledger(fresh_pg.database_url or "")
    brokers = ["reddis://127.0.0.1:6379/0", "redis://127.0.0.1:1/0"]
    try:
        check_rabbitmq()
        brokers.append(RABBITMQ_URL.replace("guest:guest@", f"guest:{PASSWORD}@"))
    except Exception:
        pass  # RabbitMQ is optional here; the Redis cases still run
    for broker in brokers:
        m = fresh_pg.manager(ns, broker_url=broker)
        with pytest.raises(BrokerUnavailable, match="no run was written") as caught:
            run(m.trigger("g"))
        assert PASSWORD not in str(caught.value)
    assert ledger.value("SELECT count(*) FROM exo_runs") == 0
    assert ledger.value("SELECT count(*) FROM exo_states") == 0
    ledger.close()


def test_the_same_idempotency_key_returns_the_same_run(fresh_pg: Stack) -> None:
    ns = uid("idem")
    fresh_pg.start_worker(ns, concurrency=1)
    m = echo_graph(fresh_pg, ns)
    first = run(m.trigger("g", idempotency_key="order-42"))
    again = run(fresh_pg.manager(ns).trigger("g", idempotency_key="order-42"))  # another client, same key
    assert first["existing"] is False and again["existing"] is True
    assert again["run_id"] == first["run_id"]
    assert run(m.wait(first["run_id"], timeout=60))["status"] == "SUCCESS"
    other = run(m.trigger("g", idempotency_key="order-43"))
    assert other["run_id"] != first["run_id"]
    with pytest.raises(TriggerError, match="idempotency_key"):
        run(m.trigger("g", idempotency_key=""))
    # The CLI: the same key prints the same run, and says it was there already.
    env = {**fresh_pg.env, "EXO_NAMESPACE": ns}
    done = [cli(env, "trigger", "g", "--idempotency-key", "cli-key") for _ in range(2)]
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    assert done[0].stdout.split()[1] == done[1].stdout.split()[1]
    assert "already" in done[1].stdout and "already" not in done[0].stdout
    ledger = Ledger(fresh_pg.database_url or "")
    assert ledger.value("SELECT count(*) FROM exo_runs") == 3
    ledger.close()


def test_reads_never_create_a_ledger(tmp_path: Path) -> None:
    """`exo-celery runs` on a database without the schema, and in a folder without a ledger."""
    require("PostgreSQL", check_postgres)
    url = create_database()
    try:
        line = one_error_line(cli({"EXO_DATABASE_URL": url}, "runs"))
        assert "has no exo_celery schema" in line and url.rsplit("/", 1)[1] in line
        with psycopg.connect(url) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
    finally:
        drop_database(url)
    home = tmp_path / "elsewhere" / ".exo"
    for command in (["runs"], ["show", "0" * 32]):
        line = one_error_line(cli({"EXO_HOME": str(home)}, *command, cwd=tmp_path))
        assert "no ledger at" in line and str(home / "ledger.db") in line
    assert not (home / "ledger.db").exists()


def test_a_wrong_database_url_prints_one_line() -> None:
    cases = {
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/exo": ["127.0.0.1", "refused"],
        f"postgresql://postgres:{PASSWORD}@no-such-host.invalid/exo": ["no-such-host.invalid", "resolve"],
        f"postgres-typo://postgres:{PASSWORD}@127.0.0.1/exo": ["cannot be used", "postgres-typo"],
    }
    for url, needles in cases.items():
        line = one_error_line(cli({"EXO_DATABASE_URL": url}, "runs"))
        for needle in needles:
            assert needle in line, (needle, line)


def test_the_client_raises_an_exo_error_while_the_database_is_down(fresh_pg: Stack) -> None:
    ns = uid("down")
    m = echo_graph(fresh_pg, ns)
    name = (fresh_pg.database_url or "").rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            for call in (lambda: m.list_runs_sync(), lambda: m.get_run_sync("0" * 32), lambda: m.trigger_sync("g")):
                with pytest.raises(LedgerUnavailable, match=f"{name} is unavailable"):
                    call()
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert m.list_runs_sync() == []  # and it works again once the database is back
