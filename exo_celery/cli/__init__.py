"""The `exo-celery` command line: run workers and beat, upsert and trigger graphs, and see what a run is doing.

Every command takes `--namespace/-n` (default `$EXO_NAMESPACE`, else `default`) and `--json`
(machine-readable output on stdout), before or after the command name. Errors print one line on
stderr and exit non-zero, without a traceback. `python -m exo_celery.cli` is the same program.
"""

from __future__ import annotations

from ..loading import load_nodes
from .commands import app, main

__all__ = ["app", "load_nodes", "main"]
