"""Row writes and reads the transition modules share: planned states, unique barrier states, the store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from ..engine import NewState
from .repo import state_values
from .statements import INSERT_STATES, upsert_store
from .tables import store


def insert_states(conn: Connection, new: list[NewState], row: Mapping[str, Any], now: float, due_at: float) -> None:
    """Insert planned states of `row`'s run, due at `due_at`."""
    if new:
        conn.execute(INSERT_STATES, [state_values(s, row, now, due_at) for s in new])


def insert_unique(
    conn: Connection, state: NewState, row: Mapping[str, Any], now: float, error: str | None = None
) -> bool:
    """Insert a barrier state unless its fingerprint exists already (a race lost: False)."""
    values = state_values(state, row, now, now)
    values["error"] = error
    try:
        with conn.begin_nested():
            conn.execute(INSERT_STATES, values)
        return True
    except IntegrityError:
        return False


def read_store(conn: Connection, run_id: str) -> dict[str, str]:
    """A run's store."""
    return dict(conn.execute(select(store.c.key, store.c.value).where(store.c.run_id == run_id)).tuples().all())


def write_store(conn: Connection, run_id: str, writes: dict[str, str]) -> None:
    """Set store keys of a run (one upsert)."""
    conn.execute(upsert_store(conn.dialect.name, run_id, writes))
