"""Which state wrote which store key (`exo_store_writes`): recorded with the completion, read by the dashboard.

A state's writes are inserted in the transaction that completes it, beside the upsert into `exo_store`,
with the same (already redacted) values; a state that writes no key costs no statement here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from .tables import store_writes


def record_store_writes(conn: Connection, run_id: str, state_id: str, writes: dict[str, str], now: float) -> None:
    """Insert one row per key `state_id` wrote (nothing when it wrote none)."""
    if writes:
        rows = [
            {"run_id": run_id, "state_id": state_id, "key": k, "value": writes[k], "written_at": now}
            for k in sorted(writes)
        ]
        conn.execute(insert(store_writes), rows)


def store_writes_of(conn: Connection, state_id: str) -> list[dict[str, Any]]:
    """The keys one state wrote, with their values and when, by key."""
    q = (
        select(store_writes.c.key, store_writes.c.value, store_writes.c.written_at)
        .where(store_writes.c.state_id == state_id)
        .order_by(store_writes.c.key)
    )
    return [dict(r) for r in conn.execute(q).mappings()]
