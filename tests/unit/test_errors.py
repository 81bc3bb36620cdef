"""The one error tree (issue 16, item 4): every raise in the library is an `ExoError` subclass drawn in
exo_celery/errors.py, except the few control-flow exceptions listed here, each with its reason."""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import exo_celery
from exo_celery import errors
from exo_celery.errors import ExoError

LIB = Path(exo_celery.__file__).resolve().parent

# Raises of classes that are not ExoError, on purpose: (file under exo_celery/, what is raised) -> why.
ALLOWED_RAISES: dict[tuple[str, str], str] = {
    ("cli/commands.py", "typer.Exit"): "the CLI's exit code (the error was already reported)",
    ("cli/output.py", "typer.Exit"): "the CLI's exit code (the error was already reported)",
    ("cli/commands.py", "typer.BadParameter"): "typer reports a bad option as a usage error",
    ("server/api.py", "HTTPException"): "an HTTP 401/403 answer",
    ("server/dashboard.py", "HTTPException"): "an HTTP 403 answer",
    ("server/dashboard.py", "LoginRequired"): "internal: the app's handler redirects to /login",
    ("embedded_transport.py", "Empty"): "kombu's transport protocol: no message in the queue",
    ("poison.py", "Empty"): "kombu's transport protocol: no message in the queue",
    ("tasks.py", "Retry"): "Celery's own signal that a task was retried (Flower shows RETRY)",
    ("runtime.py", "SystemExit"): "stops `celery worker` from its init signal, whose exceptions Celery ignores",
    ("execute.py", "NodeCancelled"): "internal: run_node turns it into 'cancelled', never raised to users",
    ("ledger/finish.py", "NotOurs"): "internal: the completion of another delivery changes nothing",
    ("ledger/moves.py", "AssertionError"): "a developer error at import: a move missing from status.TRANSITIONS",
    ("ledger/runs.py", "AssertionError"): "a loop that always returns or raises first (unreachable)",
    ("node.py", "NotImplementedError"): "BaseNode.execute is abstract (Python's convention, as exospherehost's)",
    ("ledger/notify.py", "NotImplementedError"): "an abstract method of the internal waiter classes",
    ("ledger/repo.py", "AssertionError"): "a loop that always returns or raises first (unreachable)",
    ("ledger/direct.py", "ValueError"): "a developer error: a statement whose SQL text depends on its values",
    ("ledger/direct.py", "_as_sqlalchemy_error"): "psycopg's error as SQLAlchemy's, as `Connection.execute` raises it",
}
# Exception classes defined in the library that are not ExoError, on purpose: (file, class) -> why.
ALLOWED_CLASSES: dict[tuple[str, str], str] = {
    ("signals.py", "PruneSignal"): "a signal is control flow, not an error",
    ("signals.py", "ReQueueAfterSignal"): "a signal is control flow, not an error",
    ("execute.py", "NodeCancelled"): "internal control flow (a BaseException so that `except Exception` lets it by)",
    ("ledger/finish.py", "NotOurs"): "internal control flow of a completion",
    ("server/dashboard.py", "LoginRequired"): "internal control flow: a redirect to /login",
}


def _sources() -> list[tuple[str, str, str, ast.Module]]:
    """(path under exo_celery/, module name, its package, syntax tree) of every library module."""
    found = []
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB).as_posix()
        parts = ["exo_celery", *path.relative_to(LIB).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        found.append((rel, ".".join(parts), package, ast.parse(path.read_text(), filename=str(path))))
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (head := _dotted(node.value)) is not None:
        return f"{head}.{node.attr}"
    return None


class Resolver:
    """What a name means in one module, found from its imports (anywhere in the file) and its classes,
    without importing the module itself unless a class it defines is asked for (entry points such as
    `worker_app` build apps when imported)."""

    def __init__(self, module: str, package: str, tree: ast.Module) -> None:
        self.module = module
        self.package = package
        self.imports: dict[str, tuple[str, str | None]] = {}
        self.classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = importlib.util.resolve_name("." * node.level + (node.module or ""), self.package)
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.imports[alias.asname or alias.name.split(".")[0]] = (alias.name, None)

    def resolve(self, dotted: str) -> Any:
        head, *rest = dotted.split(".")
        obj: Any
        if head in self.classes:
            obj = getattr(importlib.import_module(self.module), head)
        elif head in self.imports:
            source, name = self.imports[head]
            module = importlib.import_module(source)
            obj = module if name is None else getattr(module, name, None)
            if obj is None:  # `from package import submodule`
                obj = importlib.import_module(f"{source}.{name}")
        elif isinstance(getattr(builtins, head, None), type):
            obj = getattr(builtins, head)
        else:
            return None
        for attr in rest:
            obj = getattr(obj, attr)
        return obj


def _is_exception(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def test_every_raise_in_the_library_is_an_exo_error_or_allowed_with_a_reason() -> None:
    problems, allowed_seen = [], set()
    for rel, module, package, tree in _sources():
        resolver = Resolver(module, package, tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue  # a bare `raise` re-raises what was caught
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            dotted = _dotted(target)
            obj = resolver.resolve(dotted) if dotted else None
            if (rel, dotted) in ALLOWED_RAISES and not _is_exception(obj):  # a function building the error
                allowed_seen.add((rel, dotted))
            elif not _is_exception(obj):
                problems.append(f"{rel}:{node.lineno}: raise of {ast.unparse(node.exc)[:60]} (not a known class)")
            elif issubclass(obj, ExoError):
                continue
            elif (rel, dotted) in ALLOWED_RAISES:
                allowed_seen.add((rel, dotted))
            else:
                kind = "a builtin" if getattr(builtins, obj.__name__, None) is obj else "not an ExoError"
                problems.append(f"{rel}:{node.lineno}: raise {dotted} ({kind})")
    assert not problems, "raises outside the error tree:\n" + "\n".join(problems)
    assert allowed_seen == set(ALLOWED_RAISES), f"stale allow-list entries: {set(ALLOWED_RAISES) - allowed_seen}"


def test_every_exception_class_is_in_the_tree_or_allowed_with_a_reason() -> None:
    problems, allowed_seen = [], set()
    for rel, module, package, tree in _sources():
        resolver = Resolver(module, package, tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [resolver.resolve(d) for b in node.bases if (d := _dotted(b)) is not None]
            if not any(_is_exception(b) for b in bases):
                continue
            if (rel, node.name) in ALLOWED_CLASSES:
                allowed_seen.add((rel, node.name))
            elif rel != "errors.py":
                problems.append(f"{rel}:{node.lineno}: exception class {node.name} outside exo_celery/errors.py")
    assert not problems, "\n".join(problems)
    assert allowed_seen == set(ALLOWED_CLASSES), f"stale allow-list entries: {set(ALLOWED_CLASSES) - allowed_seen}"


def _tree_classes() -> list[type[ExoError]]:
    return [obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, ExoError)]


def test_each_error_says_when_is_drawn_in_the_tree_and_is_exported() -> None:
    drawn = errors.__doc__ or ""
    for cls in _tree_classes():
        assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} has no docstring"
        assert f"── {cls.__name__} " in drawn or cls is ExoError, f"{cls.__name__} is not drawn in errors.py"
        if cls is not errors.NoHeartbeatTable:  # the CLI's own: `beat --check` reports it
            assert cls.__name__ in exo_celery.__all__ and getattr(exo_celery, cls.__name__) is cls
    names = {line.split("── ", 1)[1].split()[0] for line in drawn.splitlines() if "── " in line}
    assert names == {cls.__name__ for cls in _tree_classes()} - {"ExoError"}, "the drawing names a class that is gone"


def test_old_homes_and_builtin_types_still_work() -> None:
    from exo_celery import engine, mapping, tasks
    from exo_celery.ledger import heartbeats

    assert engine.PlanError is errors.PlanError and mapping.PlaceholderError is errors.PlaceholderError
    assert tasks.StateErrored is errors.StateErrored and heartbeats.NoHeartbeatTable is errors.NoHeartbeatTable
    assert issubclass(errors.WaitTimeout, TimeoutError) and issubclass(errors.WorkerExited, RuntimeError)
    assert issubclass(errors.NoHeartbeatTable, errors.LedgerUnavailable)


def test_store_signal_cron_and_since_errors() -> None:
    from exo_celery.cli.since import parse_since
    from exo_celery.cron import next_fire
    from exo_celery.graph import CronTrigger, parse_trigger
    from exo_celery.node import Store
    from exo_celery.signals import ReQueueAfterSignal

    store = Store({})
    with pytest.raises(errors.StoreError, match="store key") as bad_key:
        store["a.b"] = "x"
    with pytest.raises(errors.StoreError, match="must be a str") as bad_value:
        store["k"] = 1  # type: ignore[assignment]
    with pytest.raises(errors.StoreError, match="cannot be deleted"):
        del store["k"]
    assert isinstance(bad_key.value, ValueError) and isinstance(bad_value.value, TypeError)

    with pytest.raises(errors.SignalError) as not_a_delta:
        ReQueueAfterSignal(5)  # type: ignore[arg-type]
    with pytest.raises(errors.SignalError) as not_positive:
        ReQueueAfterSignal(timedelta(0))
    assert isinstance(not_a_delta.value, TypeError) and isinstance(not_positive.value, ValueError)

    with pytest.raises(errors.CronError, match="no fire time"):
        next_fire("0 0 31 2 *", datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(errors.CronError, match="only CRON"):
        parse_trigger({"type": "WEBHOOK", "value": {"expression": "0 2 * * *"}})
    with pytest.raises(ValidationError, match="cron triggers run in UTC"):  # pydantic still reports its validators
        CronTrigger(expression="0 2 * * *", timezone="Europe/Paris")

    with pytest.raises(errors.ArgumentError, match="neither an ISO time"):
        parse_since("yesterday", 0.0)


def test_plan_and_settings_errors() -> None:
    from exo_celery.engine import make_resolver
    from exo_celery.mapping import Ref
    from exo_celery.settings import Settings, load_settings

    with pytest.raises(errors.PlanError, match="store key 'k' is not set"):
        make_resolver("n", {}, {}, {})(Ref("store", "k"))
    with pytest.raises(errors.ConfigError, match="EXO_QUEUE_PREFIX"):
        load_settings(queue_prefix=".bad")
    with pytest.raises(ValidationError, match="EXO_QUEUE_PREFIX"):
        Settings(queue_prefix=".bad")

