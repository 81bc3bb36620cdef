"""Running one node for one state: build its inputs, secrets and store, call `execute`, classify the outcome.

No Celery here: the task layer hands in a state row and gets an `Outcome` back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import inspect
import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from .crypto import redact
from .errors import OutputError
from .node import Store
from .outcomes import Outcome
from .signals import as_prune, as_requeue
from .validate import text_problem

_loops: dict[int, asyncio.AbstractEventLoop] = {}
_loops_lock = threading.Lock()
CANCEL_SIGNAL = signal.SIGUSR2  # interrupts a sync node on a process's main thread (prefork child, solo)
_main_execution: Execution | None = None


class NodeCancelled(BaseException):  # internal control flow: run_node turns it into None, never raised to users
    """Raised inside a sync node whose state was cancelled (a BaseException, so `except Exception` lets it by)."""


def event_loop() -> asyncio.AbstractEventLoop:
    """This process's one event loop, running on its own daemon thread; every async node of the process runs on it.

    Threads of a `threads` pool (or the main thread of a prefork child) submit coroutines to it and wait,
    so N concurrent async executions cost N waiting threads and one loop, never N processes or loops.
    A forked child starts its own loop thread (the parent's thread does not survive a fork).
    """
    pid = os.getpid()
    loop = _loops.get(pid)
    if loop is not None and not loop.is_closed():
        return loop
    with _loops_lock:
        loop = _loops.get(pid)
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve(loop: asyncio.AbstractEventLoop = loop) -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="exo-asyncio", daemon=True).start()
            ready.wait()
            _loops[pid] = loop
    return loop


class Execution:
    """A handle on one node execution, so that another thread (the lease keeper) can cancel it.

    An async node's task is cancelled on the loop at once. A sync node gets `NodeCancelled` raised in
    its thread: on a process's main thread through a signal (so a blocking `time.sleep` or socket read
    is interrupted too), on another thread (the `threads` pool) at its next Python instruction, which
    may be after a blocking call returns. Either way its result is discarded.
    """

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[Any] | None = None
        self._thread: int | None = None  # ident of the thread running a sync node, while it runs

    def cancel(self) -> None:
        """Stop the execution (idempotent); the caller has already learnt that its state is no longer ours."""
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            if self._future is not None:
                self._future.cancel()
            elif self._thread is not None:
                if self._thread == threading.main_thread().ident:
                    os.kill(os.getpid(), CANCEL_SIGNAL)
                else:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self._thread), ctypes.py_object(NodeCancelled)
                    )

    def _run(self, node: Any) -> Any:
        """Call `node.execute()` here (sync) or on the process's loop (async), cancellable throughout."""
        global _main_execution
        on_main = threading.current_thread() is threading.main_thread()
        with self._lock:
            if self.cancelled:
                raise NodeCancelled
            self._thread = threading.get_ident()
            if on_main:
                _install_signal_handler()
                _main_execution = self
        try:
            try:
                result = node.execute()
            finally:
                with self._lock:
                    self._thread = None
                    if on_main:
                        _main_execution = None
            if not inspect.isawaitable(result):
                return result
            with self._lock:
                if self.cancelled:
                    _close(result)
                    raise NodeCancelled
                self._future = asyncio.run_coroutine_threadsafe(_awaited(result), event_loop())
            try:
                return self._future.result()
            except concurrent.futures.CancelledError:
                raise NodeCancelled from None
        except NodeCancelled:
            raise
        except BaseException:
            # A NodeCancelled that arrived while leaving the node is still a cancellation.
            if self.cancelled:
                raise NodeCancelled from None
            raise


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


def _on_cancel_signal(_signum: int, _frame: Any) -> None:
    current = _main_execution
    if current is not None and current.cancelled and current._thread is not None:
        raise NodeCancelled


def _install_signal_handler() -> None:
    if signal.getsignal(CANCEL_SIGNAL) is not _on_cancel_signal:
        signal.signal(CANCEL_SIGNAL, _on_cancel_signal)


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
            raise OutputError(
                f"{name}.execute returned {type(item).__name__} as {where}; expected {name}.Outputs, "
                "a list of them, or None"
            )
    size = len(json.dumps(outputs))
    if size > max_bytes:
        raise OutputError(
            f"{name} returned {size} bytes of outputs, over the limit of {max_bytes} (EXO_MAX_OUTPUT_BYTES)"
        )
    return outputs


def run_node(
    node_cls: type,
    inputs: dict[str, Any],
    secrets: dict[str, str],
    load_store: Callable[[], dict[str, str]],
    max_output_bytes: int,
    execution: Execution | None = None,
) -> Outcome | None:
    """Execute `node_cls` once and say how it ended; secret values never reach the error text.

    None when `execution` was cancelled: the node was stopped and nothing is to be recorded.
    """
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
        result = (execution or Execution())._run(node)
    except BaseException as exc:
        if isinstance(exc, NodeCancelled):
            return None
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
