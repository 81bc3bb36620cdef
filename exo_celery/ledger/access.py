"""What every transition module shares: the ledger's URL, its engines and its clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.sql.selectable import ReturnsRows

from . import clock
from .db import get_engine, is_postgres
from .direct import direct


class LedgerAccess:
    """One ledger as the transitions use it (`worker=True`: the worker's bounded pool)."""

    def __init__(self, url: str, *, worker: bool = False) -> None:
        self.url = url
        self.worker = worker
        self.postgres = is_postgres(url)  # some transitions take fewer statements (data-modifying CTEs)

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, worker=self.worker)

    def autocommit(self) -> Connection:
        """On PostgreSQL, a connection whose statements commit on their own: a transition that is one
        statement (the claim, a leaf's completion) needs no BEGIN and COMMIT, two round trips less.
        On SQLite, an ordinary connection (it begins IMMEDIATE on first use)."""
        return get_engine(self.url, worker=self.worker, autocommit=True).connect()

    def first(self, statement: ReturnsRows, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """PostgreSQL: run a one-statement transition in autocommit mode on psycopg directly
        (`direct.DirectStatement`); its first row, or None."""
        return direct(statement).first(self.engine, params)

    def now(self) -> float:
        """The ledger's time (`clock.now`): what this process writes as a timestamp or a due time."""
        return clock.now(self.url)
