"""What every part of the client shares: settings, the ledger's facades, the broker, compiled graphs, own runs."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, wraps
from typing import Any, TypeVar

from celery import Celery

from ..celery_app import make_app, publish
from ..crypto import decrypt_secrets
from ..engine import CompiledGraph
from ..errors import ConfigError, NotFoundError
from ..ledger.db import translate_errors
from ..ledger.repo import Repo
from ..ledger.runtimes import Runtimes
from ..ledger.transitions import Transitions
from ..outcomes import Dispatch
from ..settings import Settings, load_settings
from ..status import TERMINAL_RUNS, RunStatus
from ..validate import name_problem
from .checks import check_id, iso

_Cls = TypeVar("_Cls", bound=type)


def ledger_errors(cls: _Cls) -> _Cls:
    """Every `*_sync` method (the async ones call them) raises LedgerUnavailable or ConfigError, naming the
    ledger in one line, instead of SQLAlchemy's OperationalError while the database is down or misnamed."""

    def translating(method: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with translate_errors(self.settings.ledger_url):
                return method(self, *args, **kwargs)

        return call

    for name, value in list(vars(cls).items()):
        if name.endswith("_sync") and callable(value):
            setattr(cls, name, translating(value))
    return cls


class ClientBase:
    """The state of a `StateManager` and the helpers its parts share (the public methods are in the parts)."""

    def __init__(
        self,
        namespace: str,
        state_manager_uri: str | None = None,
        key: str | None = None,
        state_manager_version: str = "v0",
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        validation_timeout: float = 60.0,
        settings: Settings | None = None,
    ) -> None:
        if (problem := name_problem("namespace", namespace)) is not None:
            raise ConfigError(problem)
        self.namespace = namespace
        # Kept for code that reads them; nothing here sends requests to a state manager.
        self.state_manager_uri = state_manager_uri
        self.key = key
        self.state_manager_version = state_manager_version
        self.settings = settings or load_settings(database_url=database_url, broker_url=broker_url)
        self.validation_timeout = validation_timeout
        self._compiled: dict[tuple[str, int], CompiledGraph] = {}
        self._broker_checked = False
        self.repo = Repo(self.settings.ledger_url)
        self.transitions = Transitions(
            self.settings.ledger_url,
            self.settings.lease_seconds,
            self.settings.max_countdown,
            max_input_bytes=self.settings.max_input_bytes,
        )

    @cached_property
    def app(self) -> Celery:
        """The Celery app used to publish (created on first publish)."""
        return make_app(self.settings, main=f"exo_celery.client.{self.namespace}")

    @cached_property
    def runtimes(self) -> Runtimes:
        """Which runtimes are live (reads only: a client never registers one)."""
        return Runtimes(self.settings.ledger_url, self.settings.lease_seconds)

    def _waiting(self, run: dict[str, Any]) -> dict[tuple[str, str], int]:
        """The run's nodes whose unclaimed states no live runtime serves, with how many states wait."""
        if RunStatus(run["status"]) in TERMINAL_RUNS:
            return {}
        return self.runtimes.waiting_nodes(run["id"])

    def _publish(self, dispatches: list[Dispatch]) -> None:
        publish(self.app, self.settings, dispatches)

    def _check_graph_name(self, graph_name: str) -> None:
        """A name that is not a valid graph name cannot exist (and is not sent to the database)."""
        if name_problem("graph name", graph_name) is not None:
            raise NotFoundError(f"graph {str(graph_name)[:80]!r} does not exist in namespace {self.namespace!r}")

    def _load_graph(self, graph_name: str, version: int | None = None) -> CompiledGraph:
        self._check_graph_name(graph_name)
        if version is None:
            version = self.repo.latest_version(self.namespace, graph_name)
        compiled = self._compiled.get((graph_name, version or 0))
        if compiled is not None:  # a stored version never changes
            return compiled
        row = self.repo.load_graph(self.namespace, graph_name, version) if version else None
        if row is None:
            raise NotFoundError(f"graph {graph_name!r} does not exist in namespace {self.namespace!r}")
        compiled = self._compiled[(graph_name, row["version"])] = CompiledGraph.from_row(row)
        return compiled

    def _with_secrets(self, graph: CompiledGraph) -> CompiledGraph:
        """`graph` knowing its secret values, so a trigger hides them (once per version). A client whose key
        cannot decrypt them still triggers (workers hold the key); it cannot tell a secret from other text."""
        if graph.hidden or not graph.template.secret_names:
            return graph
        try:
            known = graph.with_secrets(decrypt_secrets(graph.secrets_cipher, self.settings.fernet_key()))
        except ConfigError:
            return graph
        self._compiled[(graph.template.name, graph.version)] = known
        return known

    def _in_namespace(self, run: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
        """`run` if it belongs to this client's namespace; a missing run or another namespace's is not found."""
        if run is None or run["namespace"] != self.namespace:
            raise NotFoundError(f"run {run_id!r} does not exist in namespace {self.namespace!r}")
        return run

    def _own_run(self, run_id: str) -> dict[str, Any]:
        """The run row if it belongs to this client's namespace; another namespace's run is not found."""
        return self._in_namespace(self.repo.get_run(check_id("run", run_id)), run_id)

    @staticmethod
    def _run_view(run: dict[str, Any], counts: dict[str, int] | None) -> dict[str, Any]:
        view = {
            "run_id": run["id"],
            "graph_name": run["graph_name"],
            "namespace": run["namespace"],
            "status": run["status"],
            "created_at": iso(run["created_at"]),
            "started_at": iso(run["started_at"]),
            "finished_at": iso(run["finished_at"]),
        }
        if counts is not None:
            view["counts"] = counts
        return view
