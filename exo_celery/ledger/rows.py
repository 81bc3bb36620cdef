"""Row writes and reads the transition modules share: planned states, unique barrier states, the store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from ..engine import NewState, Planned
from ..outcomes import Created
from .statements import INSERT_STATES, INSERT_STATES_FROM_JSON, upsert_store
from .tables import store


def state_values(s: NewState, run: Mapping[str, Any], now: float, due_at: float) -> dict[str, Any]:
    """The row of a planned state; `run` gives run_id, graph_namespace, graph_name, graph_version."""
    return {
        "id": s.id,
        "run_id": run["run_id"],
        "namespace": s.namespace,
        "graph_namespace": run["graph_namespace"],
        "graph_name": run["graph_name"],
        "graph_version": run["graph_version"],
        "identifier": s.identifier,
        "node_name": s.node_name,
        "status": s.status.value,
        "inputs": s.inputs,
        "outputs": s.outputs,
        "error": None,
        "data": None,
        "retry_count": s.retry_count,
        "parents": s.parents,
        "scopes": s.scopes,
        "branch": s.branch,
        "execution_id": s.execution_id,
        "fingerprint": s.fingerprint,
        "retry_of": s.retry_of,
        "due_at": due_at,
        "lease_token": None,
        "lease_until": None,
        "dispatched_at": now,
        "started_at": None,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


INSERT_CHUNK = 1000  # rows per INSERT: a wide fan-out's states are built and written a chunk at a time


def written(s: NewState) -> Created:
    """What is kept of a new state once its row is written: enough to publish and log it."""
    return Created(s.id, s.identifier, s.status.value, s.node_name, s.namespace)


def insert_states(conn: Connection, new: Planned, row: Mapping[str, Any], now: float, due_at: float) -> list[Created]:
    """Insert planned states of `row`'s run, due at `due_at`, INSERT_CHUNK rows per statement (a wide plan's
    states are built a chunk at a time here: `Planned`)."""
    postgres = conn.dialect.name == "postgresql"
    done: list[Created] = []
    for chunk in new.chunks(INSERT_CHUNK):
        values = [state_values(s, row, now, due_at) for s in chunk]
        if postgres:
            conn.execute(INSERT_STATES_FROM_JSON, {"p_rows": values})
        else:
            conn.execute(INSERT_STATES, values)
        done += map(written, chunk)
    return done


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
