"""An operator's actions on a run of the client's namespace: retrying an ERRORED state, cancelling a run."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import NotFoundError
from .base import ClientBase, ledger_errors
from .checks import check_id


@ledger_errors
class Operator(ClientBase):
    """`manual_retry`, `cancel` and their blocking forms."""

    async def manual_retry(self, state_id: str) -> dict[str, Any]:
        """Retry an ERRORED state; calling it again for the same state returns the same retry."""
        return await asyncio.to_thread(self.manual_retry_sync, state_id)

    def manual_retry_sync(self, state_id: str) -> dict[str, Any]:
        state = self.repo.get_state(check_id("state", state_id))
        # A state belongs to its run's namespace (its graph's), wherever its node runs.
        if state is None or state["graph_namespace"] != self.namespace:
            raise NotFoundError(f"state {state_id!r} does not exist in namespace {self.namespace!r}")
        created, dispatches = self.transitions.manual_retry(state_id)
        self._publish(dispatches)
        return {
            "state_id": created["id"],
            "retry_of": state_id,
            "status": created["status"],
            "retry_count": created["retry_count"],
            "run_id": created["run_id"],
        }

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run: its states are CANCELLED at once and never run; executing ones are stopped by their worker
        within about a second (an async node's task is cancelled; a sync node is interrupted, see
        docs/execution.md) and their outcome is discarded: no outputs, no children."""
        return await asyncio.to_thread(self.cancel_sync, run_id)

    def cancel_sync(self, run_id: str) -> dict[str, Any]:
        """Blocking form of `cancel`."""
        self._own_run(run_id)  # a run's namespace never changes: checking first is enough
        return self._run_view(self.transitions.cancel(run_id), self.repo.state_counts(run_id))
