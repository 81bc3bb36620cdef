"""Running one node for one state: build its inputs, secrets and store, call `execute`, classify the outcome.

No Celery here: the task layer hands in a state row and gets an `Outcome` back.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from .crypto import redact
from .ledger.transitions import Outcome
from .node import Store
from .signals import as_prune, as_requeue
from .validate import text_problem

_loops: dict[int, asyncio.AbstractEventLoop] = {}


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop per process for async nodes (cheaper than asyncio.run per state)."""
    loop = _loops.get(os.getpid())
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops[os.getpid()] = loop
    return loop


def _normalise(node_cls: type, result: Any, max_bytes: int) -> list[dict[str, Any]]:
    """The node's return value as a list of output dicts; raises ValueError naming the problem."""
    outputs_model: type[BaseModel] = node_cls.Outputs  # type: ignore[attr-defined]
    name = node_cls.__name__
    if result is None:
        return [{}]
    if isinstance(result, (list, tuple)):
        items = list(result)
    else:
        items = [result]
    outputs: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, outputs_model):
            outputs.append(item.model_dump(mode="json"))
        elif isinstance(item, BaseModel) and type(item).__name__ == "Outputs":
            outputs.append(outputs_model.model_validate(item.model_dump()).model_dump(mode="json"))
        elif isinstance(item, dict):
            outputs.append(outputs_model.model_validate(item).model_dump(mode="json"))
        else:
            where = f"item {i} of the list" if isinstance(result, (list, tuple)) else "the value"
            raise ValueError(
                f"{name}.execute returned {type(item).__name__} as {where}; expected {name}.Outputs, "
                "a list of them, or None"
            )
    size = len(json.dumps(outputs))
    if size > max_bytes:
        raise ValueError(
            f"{name} returned {size} bytes of outputs, over the limit of {max_bytes} (EXO_MAX_OUTPUT_BYTES)"
        )
    return outputs


def run_node(
    node_cls: type,
    inputs: dict[str, Any],
    secrets: dict[str, str],
    load_store: Callable[[], dict[str, str]],
    max_output_bytes: int,
) -> Outcome:
    """Execute `node_cls` once and say how it ended; secret values never reach the error text."""
    name = node_cls.__name__
    hide = list(secrets.values())
    try:
        node_inputs = node_cls.Inputs.model_validate(inputs)  # type: ignore[attr-defined]
    except ValidationError as exc:
        error = f"inputs of {name} are invalid: {exc.errors(include_url=False, include_input=False)}"
        return Outcome("error", error=redact(error, hide), retryable=False)
    try:
        declared = node_cls.Secrets.model_fields  # type: ignore[attr-defined]
        node_secrets = node_cls.Secrets.model_validate({k: v for k, v in secrets.items() if k in declared})  # type: ignore[attr-defined]
    except ValidationError as exc:
        fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        return Outcome("error", error=f"secrets of {name} are invalid or missing: {fields}", retryable=False)

    store = Store(load_store)
    try:
        node = node_cls()
        node.inputs = node_inputs
        node.secrets = node_secrets
        node.store = store
        result = node.execute()
        if inspect.isawaitable(result):
            result = _loop().run_until_complete(result)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if (data := as_prune(exc)) is not None:
            return Outcome("prune", data=redact(json.loads(json.dumps(data, default=str)), hide))
        if (delay := as_requeue(exc)) is not None:
            return Outcome("requeue", delay=delay.total_seconds())
        return Outcome("error", error=redact(f"{type(exc).__name__}: {exc}", hide))
    try:
        outputs = _normalise(node_cls, result, max_output_bytes)
    except (ValueError, ValidationError) as exc:
        return Outcome("error", error=redact(str(exc), hide), retryable=False)
    for key, value in store.written.items():
        if (problem := text_problem(value)) is not None:
            return Outcome("error", error=f"{name} wrote store key {key!r} whose value {problem}", retryable=False)
    # A secret never reaches the ledger, not even when a node returns it or writes it to the store.
    return Outcome("success", outputs=redact(outputs, hide), store_writes=redact(store.written, hide))
