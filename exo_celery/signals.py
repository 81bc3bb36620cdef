"""Signals a node raises to steer its own state (Exosphere's names and meaning)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .errors import SignalError


class PruneSignal(Exception):
    """Stop this branch: the state becomes PRUNED with `data` recorded, and gets no children."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        super().__init__("state pruned")


class ReQueueAfterSignal(Exception):
    """Run this state again after `delay` (polling); its retry count is unchanged."""

    def __init__(self, delay: timedelta) -> None:
        if not isinstance(delay, timedelta):
            raise SignalError(f"ReQueueAfterSignal delay must be a timedelta, got {type(delay).__name__}")
        if delay.total_seconds() <= 0:
            raise SignalError(f"ReQueueAfterSignal delay must be greater than 0, got {delay}")
        self.delay = delay
        super().__init__(f"requeue after {delay}")


def _named(exc: BaseException, name: str) -> bool:
    """True if `exc`'s class or one of its bases is called `name` (exospherehost's signals, by shape)."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def as_prune(exc: BaseException) -> dict[str, Any] | None:
    """The prune data if `exc` is a PruneSignal (ours, exospherehost's, or a subclass), else None."""
    if isinstance(exc, PruneSignal) or _named(exc, "PruneSignal"):
        data = getattr(exc, "data", None)
        return dict(data) if isinstance(data, dict) else {}
    return None


def as_requeue(exc: BaseException) -> timedelta | None:
    """The delay if `exc` is a ReQueueAfterSignal (ours, exospherehost's, or a subclass), else None."""
    if isinstance(exc, ReQueueAfterSignal) or _named(exc, "ReQueueAfterSignal"):
        delay = getattr(exc, "delay", None)
        if isinstance(delay, timedelta) and delay.total_seconds() > 0:
            return delay
    return None
