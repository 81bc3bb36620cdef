"""The hot statements on psycopg's cursor: compiled once by SQLAlchemy, executed without its per-call work.

A claim and a completion are one prebuilt statement each on PostgreSQL. Through
`Connection.execute`, SQLAlchemy spends about as much CPU again as psycopg does on
each of them: a `Connection` per checkout, the isolation level set and reset, the
compiled-cache lookup, the execution context and the result object. Here the
statement is compiled once per process, and each call takes a pooled connection of
the same engine, binds the values through the same type processors, runs in
autocommit mode and returns the first row, read through the columns' result
processors. psycopg's errors become SQLAlchemy's, as `Connection.execute` raises
them (`OperationalError` for a lost server, whose connection the pool then drops),
so callers and `UNREACHABLE` handle both paths alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, exc
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import ReturnsRows

Processor = Callable[[Any], Any]


class DirectStatement:
    """One statement, compiled for an engine's dialect on first use and run on the pooled psycopg connection."""

    def __init__(self, statement: ReturnsRows) -> None:
        self.statement = statement
        self._compiled: tuple[SQLCompiler, str, dict[str, Processor]] | None = None
        self._columns: list[tuple[str, Processor | None]] | None = None  # name and reader of each result column

    def _compile(self, engine: Engine) -> tuple[SQLCompiler, str, dict[str, Processor]]:
        if self._compiled is None:
            dialect = engine.dialect
            compiled = self.statement.compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            sql = str(compiled)
            if "POSTCOMPILE" in sql:  # an expanding IN: its text would depend on the values
                raise ValueError("a direct statement cannot have expanding parameters (IN lists)")
            processors: dict[str, Processor] = {}
            for bind, name in compiled.bind_names.items():
                if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None:
                    processors[name] = processor
            self._compiled = (compiled, sql, processors)
        return self._compiled

    def _read(self, engine: Engine, cursor: psycopg.Cursor[Any], row: tuple[Any, ...]) -> dict[str, Any]:
        # The columns are the statement's, the same on every call: read once (psycopg builds
        # `description` anew on each access, a Column object per column).
        if self._columns is None:
            types = {c.name: c.type for c in self.statement.exported_columns}
            dialect = engine.dialect
            self._columns = [
                (d.name, types[d.name].dialect_impl(dialect).result_processor(dialect, d.type_code))
                for d in cursor.description or ()
            ]
        pairs = zip(self._columns, row, strict=True)
        return {name: value if read is None else read(value) for (name, read), value in pairs}

    def first(self, engine: Engine, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run the statement with `params` in autocommit mode; its first row (column name -> value) or None."""
        compiled, sql, processors = self._compile(engine)
        values = compiled.construct_params(params)
        for name, processor in processors.items():  # every value, None too, as SQLAlchemy binds them
            values[name] = processor(values[name])
        try:
            pooled = engine.raw_connection()
        except psycopg.Error as error:  # no connection could be made (`Engine.connect` wraps this too)
            raise _as_sqlalchemy_error(engine, sql, values, error, lost=False) from error
        raw: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        try:
            raw.autocommit = True
            with raw.cursor() as cursor:
                cursor.execute(sql, values)
                row = cursor.fetchone()
                found = None if row is None else self._read(engine, cursor, row)
        except psycopg.Error as error:
            lost = engine.dialect.is_disconnect(error, pooled, None)  # type: ignore[arg-type]
            if lost:
                pooled.invalidate(error)
            raise _as_sqlalchemy_error(engine, sql, values, error, lost) from error
        finally:
            if not raw.closed and raw.info.transaction_status == TransactionStatus.IDLE:
                raw.autocommit = False  # the pool's other users expect transactions
            elif pooled.is_valid:
                pooled.invalidate()  # in no known state: not given to anyone again
            pooled.close()
        return found


def _as_sqlalchemy_error(engine: Engine, sql: str, values: Any, error: psycopg.Error, lost: bool) -> BaseException:
    """psycopg's error as SQLAlchemy's (`OperationalError`, `IntegrityError`, ...), as `Connection` raises it."""
    dialect = engine.dialect
    return exc.DBAPIError.instance(sql, values, error, psycopg.Error, connection_invalidated=lost, dialect=dialect)


@cache
def direct(statement: ReturnsRows) -> DirectStatement:
    """The one `DirectStatement` of a prebuilt statement in this process."""
    return DirectStatement(statement)
