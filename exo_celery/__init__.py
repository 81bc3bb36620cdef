"""exo_celery: Exosphere-style workflow graphs on Celery, with a PostgreSQL or SQLite ledger.

Node and graph code written for `exospherehost` runs after changing its import
to `exo_celery`.
"""

from .client import StateManager
from .errors import (
    ArgumentError,
    BrokerUnavailable,
    ConfigError,
    ConflictError,
    CronError,
    ExoError,
    GraphValidationError,
    LedgerUnavailable,
    NotFoundError,
    OutputError,
    PlaceholderError,
    PlanError,
    SignalError,
    StateError,
    StateErrored,
    StoreError,
    TemplateError,
    TriggerError,
    WaitTimeout,
    WorkerExited,
)
from .graph import (
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from .node import BaseNode
from .retry import RetryStrategyEnum
from .runtime import Runtime
from .settings import Settings
from .signals import PruneSignal, ReQueueAfterSignal
from .status import RunStatus, StateStatus

__all__ = [
    # nodes and signals
    "BaseNode",
    "PruneSignal",
    "ReQueueAfterSignal",
    # graph templates
    "GraphNodeModel",
    "UnitesModel",
    "UnitesStrategyEnum",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "StoreConfigModel",
    "CronTrigger",
    # running
    "StateManager",
    "Runtime",
    "Settings",
    "StateStatus",
    "RunStatus",
    # errors (the tree is drawn in exo_celery/errors.py)
    "ExoError",
    "ConfigError",
    "ArgumentError",
    "GraphValidationError",
    "TemplateError",
    "CronError",
    "PlaceholderError",
    "PlanError",
    "NotFoundError",
    "TriggerError",
    "StateError",
    "ConflictError",
    "WaitTimeout",
    "OutputError",
    "StoreError",
    "SignalError",
    "StateErrored",
    "WorkerExited",
    "LedgerUnavailable",
    "BrokerUnavailable",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("exo_celery")  # the one source: pyproject.toml's version, as installed
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
