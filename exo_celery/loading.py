"""Node classes named by text: `package.module` (every node class in it) or `package.module:ATTR`.

Used by `exo-celery worker --nodes` and by `exo_celery.worker_app` (`EXO_NODES`).
"""

from __future__ import annotations

import importlib

from .errors import ConfigError
from .node import is_node_class


def split_specs(text: str) -> list[str]:
    """Comma-separated node specs, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def load_nodes(spec: str) -> list[type]:
    """Node classes from 'module' (every node class in it) or 'module:attr' (a class or a list of them)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import node module {module_name!r}: {exc}") from exc
    if attr:
        if not hasattr(module, attr):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
        found = getattr(module, attr)
        items = list(found) if isinstance(found, (list, tuple)) else [found]
    else:
        items = [v for v in vars(module).values() if is_node_class(v) and v.__module__ == module.__name__]
    nodes = [n for n in items if is_node_class(n)]
    if not nodes:
        raise ConfigError(f"no node classes found in {spec!r}")
    return nodes
