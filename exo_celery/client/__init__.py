"""`StateManager`: the Python API to upsert graphs, trigger runs and watch them (exospherehost's names).

The class is assembled in `manager.py` from one module per concern:

| module | holds |
|---|---|
| `checks.py` | argument checks that need no ledger (ids, trigger arguments and values, secrets in a template), `iso` |
| `base.py` | `ClientBase`: settings, the ledger's facades, the broker, compiled graphs, own runs; `ledger_errors` |
| `graphs.py` | `upsert_graph`, `upsert_graph_json`, `get_graph` |
| `triggering.py` | `trigger` (logger `exo_celery.client`) |
| `reading.py` | `get_run`, `list_runs`, `list_states` |
| `waiting.py` | `wait` |
| `operator.py` | `manual_retry`, `cancel` |
"""

from __future__ import annotations

from .checks import iso
from .manager import StateManager

__all__ = ["StateManager", "iso"]
