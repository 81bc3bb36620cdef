"""The hot statements run on psycopg directly (`ledger/direct.py`): same rows, same errors as SQLAlchemy's path."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import JSON, Engine, bindparam, create_engine, func, insert, select
from sqlalchemy.exc import OperationalError

from exo_celery.engine import new_id
from exo_celery.ledger.db import UNREACHABLE
from exo_celery.ledger.direct import DirectStatement
from exo_celery.ledger.tables import states

from .support import Stack


@pytest.fixture
def engine(pg_stack: Stack) -> Iterator[Engine]:
    """An engine of one pooled connection on the session's PostgreSQL ledger."""
    url = pg_stack.settings().ledger_url
    engine = create_engine(url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _state(state_id: str) -> dict[str, object]:
    return {
        "id": state_id,
        "run_id": new_id(),
        "namespace": "direct",
        "graph_namespace": "direct",
        "graph_name": "g",
        "graph_version": 1,
        "identifier": "a",
        "node_name": "N",
        "status": "CREATED",
        "inputs": {"text": 'é "quoted"', "n": "1"},
        "parents": {},
        "scopes": {"s1": "x"},
        "branch": "",
        "retry_count": 0,
        "due_at": 1.5,
        "attempts": 0,
        "created_at": 1.25,
        "updated_at": 1.25,
    }


def test_a_direct_statement_reads_and_binds_as_sqlalchemy_does(engine: Engine) -> None:
    state_id = new_id()
    with engine.begin() as conn:
        conn.execute(insert(states), _state(state_id))
    by_id = select(states).where(states.c.id == bindparam("p_id"))
    with engine.connect() as conn:
        expected = dict(conn.execute(by_id, {"p_id": state_id}).mappings().one())
    direct = DirectStatement(by_id)
    assert direct.first(engine, {"p_id": state_id}) == expected  # JSON decoded, floats as floats
    assert direct.first(engine, {"p_id": state_id}) == expected  # the cached readers, once more
    assert direct.first(engine, {"p_id": "missing"}) is None
    # A JSON parameter goes through SQLAlchemy's bind processor (psycopg has no adapter for a dict).
    rows = DirectStatement(select(func.json_array_length(bindparam("p_rows", type_=JSON)).label("n")))
    assert rows.first(engine, {"p_rows": [{"a": 1}, {"b": "é"}]}) == {"n": 2}
    # None goes through it too: JSON's `null` for a plain JSON type, SQL NULL for `none_as_null`.
    kind = DirectStatement(select(func.json_typeof(bindparam("p_v", type_=JSON)).label("t")))
    assert kind.first(engine, {"p_v": None}) == {"t": "null"}
    nullable = DirectStatement(select(func.json_typeof(bindparam("p_v", type_=JSON(none_as_null=True))).label("t")))
    assert nullable.first(engine, {"p_v": None}) == {"t": None}


def test_a_terminated_connection_raises_sqlalchemys_error_and_the_next_call_reconnects(
    engine: Engine, pg_stack: Stack
) -> None:
    backend = DirectStatement(select(func.pg_backend_pid().label("pid")))
    first = backend.first(engine, {})
    assert first is not None
    assert pg_stack.database_url is not None
    with psycopg.connect(pg_stack.database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first["pid"],))
    with pytest.raises(OperationalError) as lost:
        backend.first(engine, {})
    assert isinstance(lost.value, UNREACHABLE)  # what the worker retries
    assert lost.value.connection_invalidated
    again = backend.first(engine, {})
    assert again is not None and again["pid"] != first["pid"]
    with engine.connect() as conn:  # the pool's connection is usable by SQLAlchemy's path, in a transaction
        assert conn.execute(select(func.now())).scalar() is not None
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]


def test_a_database_that_refuses_connections_raises_sqlalchemys_operational_error() -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(OperationalError) as refused:
        DirectStatement(select(func.now().label("t"))).first(engine, {})
    assert isinstance(refused.value, UNREACHABLE)


def test_an_expanding_in_list_is_refused_when_compiled(engine: Engine) -> None:
    statement = select(states.c.id).where(states.c.status.in_(["QUEUED", "CREATED"]))
    with pytest.raises(ValueError, match="expanding parameters"):
        DirectStatement(statement).first(engine, {})
