"""Retry delays: pure functions of the policy and the retry number (Exosphere's formulas)."""

from __future__ import annotations

import random
from enum import Enum


class RetryStrategyEnum(str, Enum):
    """Backoff shapes; each has a full-jitter and an equal-jitter variant."""

    EXPONENTIAL = "EXPONENTIAL"
    EXPONENTIAL_FULL_JITTER = "EXPONENTIAL_FULL_JITTER"
    EXPONENTIAL_EQUAL_JITTER = "EXPONENTIAL_EQUAL_JITTER"
    LINEAR = "LINEAR"
    LINEAR_FULL_JITTER = "LINEAR_FULL_JITTER"
    LINEAR_EQUAL_JITTER = "LINEAR_EQUAL_JITTER"
    FIXED = "FIXED"
    FIXED_FULL_JITTER = "FIXED_FULL_JITTER"
    FIXED_EQUAL_JITTER = "FIXED_EQUAL_JITTER"


def base_delay(strategy: RetryStrategyEnum, factor: int, exponent: int, retry_count: int) -> float:
    """The un-jittered delay in ms of retry number `retry_count` (1 for the first retry)."""
    n = max(1, retry_count)
    family = strategy.value.split("_", 1)[0]
    if family == "EXPONENTIAL":
        return float(factor * exponent ** (n - 1))
    if family == "LINEAR":
        return float(factor * n)
    return float(factor)


def compute_delay(
    strategy: RetryStrategyEnum,
    factor: int,
    exponent: int,
    max_delay: int | None,
    retry_count: int,
    rng: random.Random | None = None,
) -> int:
    """Delay in ms before retry number `retry_count`, jittered per strategy, capped at `max_delay`."""
    draw = (rng or random).uniform
    base = base_delay(strategy, factor, exponent, retry_count)
    if strategy.value.endswith("_FULL_JITTER"):
        delay = draw(0, base)
    elif strategy.value.endswith("_EQUAL_JITTER"):
        delay = base / 2 + draw(0, base / 2)
    else:
        delay = base
    if max_delay is not None:
        delay = min(delay, max_delay)
    return int(delay)
