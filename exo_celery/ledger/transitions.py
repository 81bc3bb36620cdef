"""State transitions: each one a compare-and-set in one transaction, safe to repeat.

A transition that finds its state no longer in the expected status (or its
lease taken over) changes nothing: a duplicate or redelivered message, or a
worker that lost its lease, stops quietly.

`Transitions` is the one object workers, beat and the client hold; each rule
lives in its own module, which this facade only delegates to: `claiming`
(leases), `completing` (recording an execution's plan), `barriers` (scopes and
their firing), `operator` (manual retry, cancel) and `sweeps` (beat's work).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from ..engine import DEFAULT_MAX_INPUT_BYTES, CompiledGraph
from ..outcomes import ClaimVerdict, Completion, Dispatch, Outcome, StateRow, dispatch_of
from ..plan import MAX_DELIVERIES
from .access import LedgerAccess
from .claiming import EARLY_TOLERANCE, Claims
from .completing import Completions
from .operator import OperatorActions
from .sweeps import Sweeps

__all__ = [
    "EARLY_TOLERANCE",
    "MAX_DELIVERIES",
    "Completion",
    "Dispatch",
    "Outcome",
    "Transitions",
    "dispatch_of",
]


class Transitions:
    """Every status change of states and runs."""

    def __init__(
        self,
        url: str,
        lease_seconds: float,
        max_countdown: float,
        *,
        worker: bool = False,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    ) -> None:
        self.access = LedgerAccess(url, worker=worker)
        self.url = url
        self.worker = worker
        self.postgres = self.access.postgres
        self.lease_seconds = lease_seconds
        self.max_countdown = max_countdown
        self.max_input_bytes = max_input_bytes
        self.claims = Claims(self.access, lease_seconds)
        self.completions = Completions(self.access, max_countdown, max_input_bytes)
        self.operator = OperatorActions(self.access)
        self.sweeps = Sweeps(self.access, lease_seconds)

    @property
    def engine(self) -> Engine:
        return self.access.engine

    def now(self) -> float:
        """The ledger's time (`clock.now`): what this process writes as a timestamp or a due time."""
        return self.access.now()

    # -- claiming (claiming.py) ---------------------------------------------
    def claim(
        self, state_id: str, token: str, namespace: str | None = None
    ) -> tuple[ClaimVerdict, StateRow | None]:
        """Take the lease on a QUEUED state: ("claimed", row), ("early", row) or ("skip", None)."""
        return self.claims.claim(state_id, token, namespace)

    def renew_leases(self, leases: dict[str, str]) -> None:
        """Extend the leases of states this process is still executing (state id -> lease token)."""
        self.claims.renew_leases(leases)

    def lost_leases(self, leases: dict[str, str]) -> set[str]:
        """Of these executing states (id -> lease token), those whose lease is gone."""
        return self.claims.lost_leases(leases)

    # -- completing (completing.py, barriers.py) ------------------------------
    def complete(self, graph: CompiledGraph, row: StateRow, token: str, outcome: Outcome) -> Completion:
        """Record how an execution ended and everything it causes; says what to publish and log."""
        return self.completions.complete(graph, row, token, outcome)

    # -- operator actions (operator.py) ---------------------------------------
    def manual_retry(self, state_id: str) -> tuple[dict[str, Any], list[Dispatch]]:
        """Retry an ERRORED (or NEXT_CREATED_ERROR / CANCELLED) state; repeating it returns the same retry."""
        return self.operator.manual_retry(state_id)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run: its waiting and executing states become CANCELLED."""
        return self.operator.cancel(run_id)

    # -- beat (sweeps.py) -------------------------------------------------------
    def release_due(self, horizon: float, limit: int = 2000) -> list[Dispatch]:
        """Move CREATED states due within `horizon` seconds to QUEUED; returns them to publish."""
        return self.sweeps.release_due(horizon, limit)

    def recover(self, limit: int = 2000) -> list[Dispatch]:
        """States whose worker died (their lease expired after a claim): publish them again."""
        return self.sweeps.recover(limit)

    def waiting_unclaimed(self) -> list[tuple[str, str, int]]:
        """(namespace, node_name, count) of QUEUED states never claimed and due."""
        return self.sweeps.waiting_unclaimed()

    def resend_oldest(
        self, nodes: list[tuple[str, str]], count: int, dispatched_before: float | None = None
    ) -> list[Dispatch]:
        """Mark for re-sending the `count` never-claimed states of these nodes that were dispatched first."""
        return self.sweeps.resend_oldest(nodes, count, dispatched_before)
