"""The one error tree of exo_celery.

    ExoError
    ├── ConfigError           settings or environment cannot be used (also a ValueError)
    ├── ArgumentError         a call was given a value it does not take, e.g. a run status (also a ValueError)
    ├── GraphValidationError  a graph template was rejected (lists every problem)
    ├── TemplateError         a part of a template has the wrong shape (also a ValueError; pydantic reports it)
    │   └── CronError         a cron trigger or expression cannot be used
    ├── PlaceholderError      a `${{ }}` placeholder does not parse (also a ValueError)
    ├── PlanError             a state's children (or a run's root) cannot be planned: becomes NEXT_CREATED_ERROR
    ├── NotFoundError         a graph, run or state does not exist
    ├── TriggerError          a trigger call was refused (store keys, inputs)
    ├── StateError            a request does not fit a state's or run's status
    ├── ConflictError         concurrent writers kept changing what a call was writing; try again
    ├── WaitTimeout           a wait for a run ended before the run did (also a TimeoutError)
    ├── OutputError           a node returned something that is not its Outputs (also a ValueError)
    ├── StoreError            a node wrote a store key or value that cannot be stored (also a ValueError and TypeError)
    ├── SignalError           a signal was built with a bad argument (also a ValueError and TypeError)
    ├── StateErrored          a node's Celery task reports that its state ended ERRORED
    ├── WorkerExited          the worker process of `Runtime.start()` exited with an error (also a RuntimeError)
    ├── LedgerUnavailable     the ledger database cannot be reached, or has no exo_celery schema
    │   └── NoHeartbeatTable  the ledger predates beat heartbeats
    └── BrokerUnavailable     the broker cannot be reached or used (a trigger then writes nothing)

A class that is also a builtin keeps the type its raise had before, so `except ValueError` (and
pydantic validators, which turn a ValueError into a ValidationError) work as they did.

Signals (`PruneSignal`, `ReQueueAfterSignal`) are control flow, not errors. So are a few
exceptions that never leave the library (`execute.NodeCancelled`, `ledger.finish.NotOurs`, the
dashboard's `LoginRequired`); tests/unit/test_errors.py lists them and checks that every other
raise in the library is one of the classes above.
"""

from __future__ import annotations


class ExoError(Exception):
    """Root of every error exo_celery raises on purpose."""


class ConfigError(ExoError, ValueError):
    """Raised when settings or the environment cannot be used."""


class ArgumentError(ExoError, ValueError):
    """Raised when a call is given a value it does not take (a list limit, a run status, a `--since` time)."""


class GraphValidationError(ExoError):
    """Raised by `upsert_graph` when a template is invalid; `.errors` lists every problem."""

    def __init__(self, graph_name: str, errors: list[str]) -> None:
        self.graph_name = graph_name
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"graph {graph_name!r} is invalid ({len(self.errors)} problem(s)):\n{lines}")


class TemplateError(ExoError, ValueError):
    """Raised by the template models' validators when a part has the wrong shape (pydantic reports it)."""


class CronError(TemplateError):
    """Raised when a cron trigger or expression cannot be used (a non-CRON type, a zone, no fire time)."""


class PlaceholderError(ExoError, ValueError):
    """Raised when a `${{ }}` placeholder does not parse."""


class PlanError(ExoError):
    """Raised when children (or a root) cannot be planned; the message says why (becomes NEXT_CREATED_ERROR)."""


class NotFoundError(ExoError):
    """Raised when a graph, run or state does not exist."""


class TriggerError(ExoError):
    """Raised when a trigger is refused (missing store keys, bad inputs or store values)."""


class StateError(ExoError):
    """Raised when a request does not fit the current status of a state or run."""


class ConflictError(ExoError):
    """Raised when concurrent writers kept changing a graph's versions while a call wrote one; try again."""


class WaitTimeout(ExoError, TimeoutError):
    """Raised by `wait` (and `exo-celery trigger --wait`) when the run has not ended within the timeout."""


class OutputError(ExoError, ValueError):
    """Raised inside a worker when a node's return value is not its `Outputs` (or is too large)."""


class StoreError(ExoError, ValueError, TypeError):
    """Raised when a node sets a store key or value that cannot be stored, or deletes a key."""


class SignalError(ExoError, ValueError, TypeError):
    """Raised when `ReQueueAfterSignal` is given a delay that is not a positive timedelta."""


class StateErrored(ExoError):
    """Raised from a node's task when its state ended ERRORED, so Celery and Flower record a FAILURE.

    Its text is the state's error with secrets and input values taken out.
    """


class WorkerExited(ExoError, RuntimeError):
    """Raised by `Runtime.start()`'s task when its worker process exits with a non-zero code."""


class LedgerUnavailable(ExoError):
    """Raised when the ledger cannot be reached or used, or (for reads) has no schema; names it, never a password."""


class NoHeartbeatTable(LedgerUnavailable):
    """Raised by `exo-celery beat --check` when the ledger predates heartbeats (run `exo-celery db upgrade`)."""


class BrokerUnavailable(ExoError):
    """Raised by `trigger` when the broker cannot be reached or used; nothing was written."""
