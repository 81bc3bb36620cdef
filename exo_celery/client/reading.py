"""Reading runs and states of the client's namespace (secret values masked, waiting states explained)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..crypto import decrypt_secrets, redact
from ..errors import ArgumentError, ConfigError
from ..ledger.runtimes import waiting_reason
from ..status import RunStatus, StateStatus
from .base import ClientBase, ledger_errors
from .checks import check_id, iso


@ledger_errors
class Reading(ClientBase):
    """`get_run`, `list_runs`, `list_states` and their blocking forms."""

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """A run's status and its states counted by status; `waiting` names the nodes whose states wait
        for a runtime (no live runtime serves them), e.g. `[{"node_name": "X", "namespace": "ns",
        "reason": "no live runtime serves node X", "states": 3}]`."""
        return await asyncio.to_thread(self.get_run_sync, run_id)

    def get_run_sync(self, run_id: str) -> dict[str, Any]:
        found, counts = self.repo.run_with_counts(check_id("run", run_id))
        run = self._in_namespace(found, run_id)
        view = self._run_view(run, counts)
        view["waiting"] = [
            {"node_name": node, "namespace": ns, "reason": waiting_reason(ns, node, run["namespace"]), "states": n}
            for (ns, node), n in sorted(self._waiting(run).items())
        ]
        return view

    async def list_runs(self, graph_name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Runs of this namespace, newest first."""
        return await asyncio.to_thread(self.list_runs_sync, graph_name, limit)

    def list_runs_sync(
        self,
        graph_name: str | None = None,
        limit: int = 50,
        *,
        status: str | list[str] | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Blocking form of `list_runs`; `status` (one or several) and `since` (epoch seconds) filter."""
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ArgumentError(f"limit must be a whole number from 1 to 100000, got {limit!r}")
        if graph_name is not None:
            self._check_graph_name(graph_name)
        statuses = [status] if isinstance(status, str) else list(status or [])
        known = {s.value for s in RunStatus}
        unknown = [s for s in statuses if s not in known]
        if unknown:
            raise ArgumentError(f"unknown run status {unknown[0]!r}: expected one of {', '.join(sorted(known))}")
        found = self.repo.list_runs(self.namespace, graph_name, limit, statuses=statuses or None, since=since)
        return [self._run_view(r, None) for r in found]

    async def list_states(self, run_id: str) -> list[dict[str, Any]]:
        """Every state of a run; secret values are masked wherever they would appear. `waiting_reason`
        says why a state has not started when no live runtime serves its node (else None)."""
        return await asyncio.to_thread(self.list_states_sync, run_id)

    def list_states_sync(self, run_id: str) -> list[dict[str, Any]]:
        run = self._own_run(run_id)
        row = self.repo.load_graph(run["namespace"], run["graph_name"], run["graph_version"])
        try:
            hidden = list(decrypt_secrets(row["secrets_cipher"], self.settings.fernet_key()).values()) if row else []
        except ConfigError:  # workers redact before they write; the states must stay readable (why they failed)
            hidden = []
        fields = (
            "id",
            "identifier",
            "node_name",
            "namespace",
            "status",
            "inputs",
            "outputs",
            "error",
            "retry_count",
            "parents",
            "data",
        )
        waiting = self._waiting(run)
        views = []
        for s in self.repo.list_states(run_id):
            view = {k: redact(s[k], hidden) for k in fields}
            unserved = (s["namespace"], s["node_name"]) in waiting
            if (
                unserved
                and s["status"] in (StateStatus.QUEUED.value, StateStatus.CREATED.value)
                and s["lease_until"] is None
            ):
                view["waiting_reason"] = waiting_reason(s["namespace"], s["node_name"], run["namespace"])
            else:
                view["waiting_reason"] = None
            view.update(
                run_id=s["run_id"],
                created_at=iso(s["created_at"]),
                updated_at=iso(s["updated_at"]),
                due_at=iso(s["due_at"]),
                retry_of=s["retry_of"],
                attempts=s["attempts"],
            )
            views.append(view)
        return views
