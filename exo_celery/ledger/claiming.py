"""Claiming: a worker takes the lease of a QUEUED state, keeps it while it executes, notices its loss.

The claim is a compare-and-set on the ledger's clock (`statements.CLAIM`): a due QUEUED state whose
lease is free or expired and whose run is not cancelled. A message that arrives early is sent again;
a state whose run was cancelled while it waited is CANCELLED here.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from ..outcomes import ClaimVerdict, StateRow, state_row
from ..status import RunStatus, StateStatus
from .access import LedgerAccess
from .clock import ledger_now
from .moves import CANCEL_WAITING
from .statements import CLAIM, CLAIM_IN_NAMESPACE, CLAIM_STARTING_RUN, START_RUN
from .tables import runs, states

S = StateStatus
EARLY_TOLERANCE = 0.02  # seconds a message may arrive before its due time and still run


class Claims:
    """Leases of executing states."""

    def __init__(self, access: LedgerAccess, lease_seconds: float) -> None:
        self.access = access
        self.lease_seconds = lease_seconds

    def claim(
        self, state_id: str, token: str, namespace: str | None = None
    ) -> tuple[ClaimVerdict, StateRow | None]:
        """Take the lease on a QUEUED state: ("claimed", row), ("early", row) or ("skip", None).

        With `namespace`, only a state of that namespace is claimed (a misrouted message is ignored).
        """
        params = {
            "p_id": state_id,
            "p_early": EARLY_TOLERANCE,
            "p_token": token,
            "p_lease_seconds": self.lease_seconds,
            "p_namespace": namespace,
        }
        if self.access.postgres:
            claimed = self.access.first(CLAIM_STARTING_RUN[namespace is not None], params)
            if claimed is not None:
                return "claimed", state_row(claimed)
        with self.access.autocommit() as conn:
            if not self.access.postgres:  # SQLite: the claim, then the run's start, in one transaction
                row = conn.execute(CLAIM if namespace is None else CLAIM_IN_NAMESPACE, params).mappings().first()
                if row is not None:
                    if not row["parents"]:
                        conn.execute(START_RUN, {"p_run": row["run_id"]})
                    conn.commit()
                    return "claimed", state_row(row)
            found = conn.execute(select(states, ledger_now().label("ledger_now")).where(states.c.id == state_id))
            current = found.mappings().first()
            if current is not None and current["status"] in CANCEL_WAITING.source_values:
                if _cancelled_run(conn, state_row(current)):
                    conn.commit()
                    return "skip", None
        if current is not None and current["status"] == S.QUEUED.value and current["due_at"] > current["ledger_now"]:
            return "early", state_row({k: v for k, v in current.items() if k != "ledger_now"})
        return "skip", None

    def renew_leases(self, leases: dict[str, str]) -> None:
        """Extend the leases of states this process is still executing (state id -> lease token)."""
        if not leases:
            return
        mine = [
            states.c.id.in_(list(leases)),
            states.c.lease_token.in_(list(leases.values())),
            states.c.status == S.QUEUED.value,
        ]
        if self.access.postgres:
            # A row locked by its completion (this process's own) is skipped, not waited on: that
            # transaction decides the state, and leases of the other states here keep being renewed.
            mine.append(states.c.id.in_(select(states.c.id).where(*mine).with_for_update(skip_locked=True)))
        with self.access.engine.begin() as conn:
            conn.execute(update(states).where(*mine).values(lease_until=ledger_now() + self.lease_seconds))

    def lost_leases(self, leases: dict[str, str]) -> set[str]:
        """Of these executing states (id -> lease token), those whose lease is gone: cancelled or taken over."""
        if not leases:
            return set()
        with self.access.engine.connect() as conn:
            rows = conn.execute(
                select(states.c.id, states.c.lease_token, states.c.status).where(states.c.id.in_(list(leases)))
            ).all()
        held = {r.id for r in rows if r.lease_token == leases[r.id] and r.status == S.QUEUED.value}
        return set(leases) - held


def _cancelled_run(conn: Connection, row: StateRow) -> bool:
    """True (and the state CANCELLED) when the state's run was cancelled while it waited."""
    status = conn.execute(select(runs.c.status).where(runs.c.id == row["run_id"])).scalar()
    if status != RunStatus.CANCELLED.value:
        return False
    conn.execute(
        update(states)
        .where(states.c.id == row["id"], states.c.status.in_(CANCEL_WAITING.source_values))
        .values(status=CANCEL_WAITING.target, lease_token=None, lease_until=None, updated_at=ledger_now())
    )
    return True
