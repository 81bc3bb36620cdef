"""What every request handler shares: settings, one client per namespace, the read queries, the key ring,
and the ledger-side checks that keep a namespace's runs and states inside it."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from ..client import StateManager, iso
from ..crypto import decrypt_secrets, redact
from ..errors import NotFoundError
from ..ledger.queries import Queries
from ..ledger.repo import Repo
from ..settings import Settings
from .auth import KeyRing

_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Context:
    """Per-process server state (created once by `create_app`)."""

    settings: Settings
    ring: KeyRing
    flower_url: str | None = None
    _managers: dict[str, StateManager] = field(default_factory=dict)
    _hidden: dict[tuple[str, str, int], list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.queries = Queries(self.settings.ledger_url)
        self.repo = Repo(self.settings.ledger_url)

    def manager(self, namespace: str) -> StateManager:
        """The client of one namespace (its writes: upsert, trigger, retry, cancel)."""
        with self._lock:
            found = self._managers.get(namespace)
            if found is None:
                found = StateManager(
                    namespace, settings=self.settings, validation_timeout=self.settings.serve_validation_timeout
                )
                self._managers[namespace] = found
            return found

    def run_in(self, namespace: str, run_id: str) -> dict[str, Any]:
        """The run row, only if it belongs to `namespace` (else NotFoundError, as for a missing one)."""
        run = self.repo.get_run(run_id) if isinstance(run_id, str) and _ID.fullmatch(run_id) else None
        if run is None or run["namespace"] != namespace:
            raise NotFoundError(f"run {str(run_id)[:80]!r} does not exist in namespace {namespace!r}")
        return run

    def state_in(self, namespace: str, state_id: str) -> dict[str, Any]:
        """The state row, only if its run belongs to `namespace`."""
        state = self.repo.get_state(state_id) if isinstance(state_id, str) and _ID.fullmatch(state_id) else None
        if state is None or state["graph_namespace"] != namespace:
            raise NotFoundError(f"state {str(state_id)[:80]!r} does not exist in namespace {namespace!r}")
        return state

    def hidden_values(self, namespace: str, graph_name: str, version: int) -> list[str]:
        """The secret values of one graph version, to mask wherever they might appear."""
        key = (namespace, graph_name, version)
        if key not in self._hidden:
            row = self.repo.load_graph(namespace, graph_name, version)
            values = list(decrypt_secrets(row["secrets_cipher"], self.settings.fernet_key()).values()) if row else []
            self._hidden[key] = values
        return self._hidden[key]

    def store_writes_view(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """The store keys a state wrote (key, value, written_at), secrets masked."""
        hidden = self.hidden_values(state["graph_namespace"], state["graph_name"], state["graph_version"])
        return [
            {"key": redact(w["key"], hidden), "value": redact(w["value"], hidden), "written_at": iso(w["written_at"])}
            for w in self.queries.store_writes_of(state["id"])
        ]

    def state_view(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state as the API shows it, secrets masked."""
        hidden = self.hidden_values(state["graph_namespace"], state["graph_name"], state["graph_version"])
        view = {
            k: redact(state[k], hidden)
            for k in ("id", "identifier", "node_name", "namespace", "status", "inputs", "outputs", "error", "data")
        }
        view.update(
            run_id=state["run_id"],
            graph_name=state["graph_name"],
            retry_count=state["retry_count"],
            parents=state["parents"],
            retry_of=state["retry_of"],
            attempts=state["attempts"],
            created_at=iso(state["created_at"]),
            updated_at=iso(state["updated_at"]),
            due_at=iso(state["due_at"]),
            started_at=iso(state.get("started_at")),
        )
        return view
