"""The one error tree of exo_celery.

    ExoError
    ├── ConfigError           settings or environment cannot be used
    ├── GraphValidationError  a graph template was rejected (lists every problem)
    ├── NotFoundError         a graph, run or state does not exist
    ├── TriggerError          a trigger call was refused (store keys, inputs)
    ├── StateError            a request does not fit a state's or run's status
    ├── OutputError           a node returned something that is not its Outputs
    ├── LedgerUnavailable     the ledger database cannot be reached, or has no exo_celery schema
    └── BrokerUnavailable     the broker cannot be reached or used (a trigger then writes nothing)

Signals (`PruneSignal`, `ReQueueAfterSignal`) are control flow, not errors.
"""

from __future__ import annotations


class ExoError(Exception):
    """Root of every error exo_celery raises on purpose."""


class ConfigError(ExoError):
    """Raised when settings or the environment cannot be used."""


class GraphValidationError(ExoError):
    """Raised by `upsert_graph` when a template is invalid; `.errors` lists every problem."""

    def __init__(self, graph_name: str, errors: list[str]) -> None:
        self.graph_name = graph_name
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"graph {graph_name!r} is invalid ({len(self.errors)} problem(s)):\n{lines}")


class NotFoundError(ExoError):
    """Raised when a graph, run or state does not exist."""


class TriggerError(ExoError):
    """Raised when a trigger is refused (missing store keys, bad inputs or store values)."""


class StateError(ExoError):
    """Raised when a request does not fit the current status of a state or run."""


class OutputError(ExoError):
    """Raised inside a worker when a node's return value is not its `Outputs` (or is too large)."""


class LedgerUnavailable(ExoError):
    """Raised when the ledger cannot be reached or used, or (for reads) has no schema; names it, never a password."""


class BrokerUnavailable(ExoError):
    """Raised by `trigger` when the broker cannot be reached or used; nothing was written."""
