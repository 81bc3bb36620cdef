"""Beat heartbeats: written every tick, read by `exo-celery beat --check`; both on the ledger's clock."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import NullPool

from ..errors import NoHeartbeatTable
from .clock import ledger_now
from .db import get_engine, is_postgres
from .tables import heartbeats


def record_beat(url: str, name: str, host: str, pid: int, started_at: float, sweep_interval: float) -> None:
    """Insert or refresh the heartbeat row of beat `name` (one statement, safe to repeat)."""
    now = ledger_now()
    values = {
        "name": name,
        "host": host,
        "pid": pid,
        "started_at": started_at,
        "beat_at": now,
        "sweep_interval": sweep_interval,
    }
    insert = pg_insert if is_postgres(url) else sqlite_insert
    statement = insert(heartbeats).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=[heartbeats.c.name],
        set_={"host": host, "pid": pid, "started_at": started_at, "beat_at": now, "sweep_interval": sweep_interval},
    )
    with get_engine(url).begin() as conn:
        conn.execute(statement)


@dataclass
class LastBeat:
    """The newest heartbeat found, and how old it is by the ledger's clock."""

    name: str
    host: str
    pid: int
    age: float
    sweep_interval: float


_NO_TABLE = f"the ledger has no {heartbeats.name} table (run `exo-celery db upgrade`, then start beat)"


def last_beat(url: str, name: str | None = None) -> LastBeat | None:
    """The heartbeat of beat `name` (or the freshest of all when None); None if never recorded.

    Opens its own short-lived connection and never migrates: a health check must not change the ledger.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path != ":memory:" and not os.path.exists(path):
            raise NoHeartbeatTable(_NO_TABLE)  # and do not create an empty ledger file
    engine: Engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(heartbeats.name):
                raise NoHeartbeatTable(_NO_TABLE)
            age = (ledger_now() - heartbeats.c.beat_at).label("age")
            query = select(heartbeats.c.name, heartbeats.c.host, heartbeats.c.pid, heartbeats.c.sweep_interval, age)
            if name is not None:
                query = query.where(heartbeats.c.name == name)
            row = conn.execute(query.order_by(heartbeats.c.beat_at.desc()).limit(1)).mappings().first()
    finally:
        engine.dispose()
    if row is None:
        return None
    return LastBeat(row["name"], row["host"], int(row["pid"]), float(row["age"]), float(row["sweep_interval"]))
