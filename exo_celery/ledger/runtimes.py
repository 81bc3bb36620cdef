"""Which runtimes are live and which nodes they serve: registration, heartbeats, and "waiting for a runtime".

A runtime (one worker process tree) registers a row when it starts consuming, with the nodes whose
queues it consumes, and refreshes `heartbeat_at` every `stale_after / 3` seconds. It is live while
its heartbeat is younger than its own `stale_after` (its EXO_LEASE_SECONDS, stored in its row, so a
reader with other settings judges it the same way) and it has not stopped: a clean stop marks it
stopped at once, a killed one goes stale. Every time here is the ledger's clock
(`ledger_now()`), so runtimes on hosts with skewed clocks still agree.

`live_runtime_serves` is the one definition of "a live runtime serves this state's node": reads
(`waiting_nodes`) and beat's sweep use it alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from ..status import StateStatus
from .clock import ledger_now
from .db import get_engine
from .tables import runtime_nodes, runtimes, states

PURGE_AFTER = 24 * 3600.0  # rows of runtimes stopped or stale this long are deleted when another registers
WAITING_STATUSES = (StateStatus.QUEUED.value, StateStatus.CREATED.value)


def _live() -> ColumnElement[bool]:
    return and_(runtimes.c.stopped_at.is_(None), runtimes.c.heartbeat_at + runtimes.c.stale_after >= ledger_now())


def live_runtime_serves(
    namespace: ColumnElement[Any], node_name: ColumnElement[Any], for_at_least: float = 0.0
) -> ColumnElement[bool]:
    """SQL: some live runtime serves node (`namespace`, `node_name`), and has been live `for_at_least` seconds.

    Beat's sweep passes `for_at_least=EXO_LEASE_SECONDS`: a never-claimed state only counts as lost once
    a runtime serving its node has had a whole lease to take it (its message waited in the node's queue).
    """
    conditions = [runtime_nodes.c.namespace == namespace, runtime_nodes.c.node_name == node_name, _live()]
    if for_at_least > 0:
        conditions.append(runtimes.c.started_at <= ledger_now() - for_at_least)
    return exists(
        select(runtime_nodes.c.runtime_id)
        .join(runtimes, runtimes.c.id == runtime_nodes.c.runtime_id)
        .where(*conditions)
    )


def waiting_reason(namespace: str, node_name: str, run_namespace: str | None = None) -> str:
    """What a state whose node no live runtime serves says about it."""
    where = "" if namespace == run_namespace else f" in namespace {namespace!r}"
    return f"no live runtime serves node {node_name}{where}"


class Runtimes:
    """Registration and heartbeats of runtimes, and which nodes of a run wait for one."""

    def __init__(self, url: str, stale_after: float) -> None:
        """`stale_after`: how long a runtime registered here stays live without a heartbeat (its lease)."""
        self.url = url
        self.stale_after = stale_after

    def _connect(self) -> Connection:
        return get_engine(self.url).connect()

    # -- a runtime's own rows ---------------------------------------------
    def register(self, runtime_id: str, namespace: str, name: str, nodes: Iterable[str], host: str, pid: int) -> None:
        """Record a runtime that starts consuming the queues of `nodes` (safe to repeat for the same id)."""
        served = sorted(set(nodes))
        with get_engine(self.url).begin() as conn:
            now = conn.execute(select(ledger_now())).scalar_one()
            conn.execute(delete(runtime_nodes).where(runtime_nodes.c.runtime_id == runtime_id))
            conn.execute(delete(runtimes).where(runtimes.c.id == runtime_id))
            conn.execute(
                insert(runtimes).values(
                    id=runtime_id,
                    namespace=namespace,
                    name=name[:256],
                    host=host[:256],
                    pid=pid,
                    started_at=now,
                    heartbeat_at=now,
                    stale_after=self.stale_after,
                    stopped_at=None,
                )
            )
            if served:
                conn.execute(
                    insert(runtime_nodes),
                    [{"runtime_id": runtime_id, "namespace": namespace, "node_name": n} for n in served],
                )
            self._purge(conn, now)

    def heartbeat(self, runtime_id: str) -> bool:
        """Refresh a runtime's heartbeat; False when its row is gone or it was marked stopped."""
        with get_engine(self.url).begin() as conn:
            found = conn.execute(
                update(runtimes)
                .where(runtimes.c.id == runtime_id, runtimes.c.stopped_at.is_(None))
                .values(heartbeat_at=ledger_now())
            ).rowcount
        return bool(found)

    def stop(self, runtime_id: str) -> None:
        """A runtime that shuts down cleanly is not live any more, at once."""
        with get_engine(self.url).begin() as conn:
            conn.execute(
                update(runtimes)
                .where(runtimes.c.id == runtime_id, runtimes.c.stopped_at.is_(None))
                .values(stopped_at=ledger_now())
            )

    def _purge(self, conn: Connection, now: float) -> None:
        old = [runtimes.c.heartbeat_at < now - PURGE_AFTER]
        gone = select(runtimes.c.id).where(*old).scalar_subquery()
        conn.execute(delete(runtime_nodes).where(runtime_nodes.c.runtime_id.in_(gone)))
        conn.execute(delete(runtimes).where(*old))

    # -- reads --------------------------------------------------------------
    def list_runtimes(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Runtimes registered in the last day (newest first), each with `nodes`, `live` and `heartbeat_age`."""
        age = (ledger_now() - runtimes.c.heartbeat_at).label("heartbeat_age")
        q = select(runtimes, _live().label("live"), age)
        if namespace is not None:
            q = q.where(runtimes.c.namespace == namespace)
        with self._connect() as conn:
            rows = [dict(r) for r in conn.execute(q.order_by(runtimes.c.started_at.desc())).mappings()]
            ids = [r["id"] for r in rows]
            served: dict[str, list[str]] = {}
            if ids:
                found = conn.execute(
                    select(runtime_nodes.c.runtime_id, runtime_nodes.c.node_name)
                    .where(runtime_nodes.c.runtime_id.in_(ids))
                    .order_by(runtime_nodes.c.node_name)
                )
                for runtime_id, node in found:
                    served.setdefault(runtime_id, []).append(node)
        for r in rows:
            r["live"] = bool(r["live"])
            r["heartbeat_age"] = max(0.0, float(r["heartbeat_age"]))
            r["nodes"] = served.get(r["id"], [])
        return rows

    def waiting_nodes(self, run_id: str) -> dict[tuple[str, str], int]:
        """(namespace, node) -> how many of the run's unclaimed QUEUED/CREATED states no live runtime can take."""
        q = (
            select(states.c.namespace, states.c.node_name, func.count())
            .where(
                states.c.run_id == run_id,
                states.c.status.in_(WAITING_STATUSES),
                states.c.lease_until.is_(None),
                ~live_runtime_serves(states.c.namespace, states.c.node_name),
            )
            .group_by(states.c.namespace, states.c.node_name)
        )
        with self._connect() as conn:
            return {(ns, node): int(n) for ns, node, n in conn.execute(q)}

    def hand_back(self, state_id: str, token: str) -> bool:
        """Give up a claim taken by a worker that does not serve the state's node (a misrouted message):
        the lease is dropped and the delivery not counted, so no retry or attempt is spent."""
        with get_engine(self.url, worker=True).begin() as conn:
            found = conn.execute(
                update(states)
                .where(states.c.id == state_id, states.c.lease_token == token)
                .where(states.c.status == StateStatus.QUEUED.value)
                .values(
                    lease_token=None,
                    lease_until=None,
                    attempts=states.c.attempts - 1,
                    dispatched_at=ledger_now(),
                )
            ).rowcount
        return bool(found)
