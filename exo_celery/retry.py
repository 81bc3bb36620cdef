"""Retry delays: pure functions of the policy and the retry number (Exosphere's formulas)."""

from __future__ import annotations

import random
from enum import Enum

# A ceiling on any un-jittered delay: about 100 years in ms. Far beyond any useful retry,
# yet small enough that the float arithmetic of jitter and due times cannot overflow
# (factor * exponent ** (n - 1) with in-range policies can exceed what a float holds).
DELAY_CEILING_MS = 100 * 365 * 24 * 3600 * 1000


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
    """The un-jittered delay in ms of retry number `retry_count` (1 for the first retry).

    Never above DELAY_CEILING_MS, so it always fits a float.
    """
    n = max(1, retry_count)
    family = strategy.value.split("_", 1)[0]
    if family == "EXPONENTIAL":
        if factor > 0 and exponent > 1 and (n - 1) * (exponent.bit_length() - 1) > DELAY_CEILING_MS.bit_length():
            return float(DELAY_CEILING_MS)  # skip computing a number with thousands of digits
        value = factor * exponent ** (n - 1)
    elif family == "LINEAR":
        value = factor * n
    else:
        value = factor
    return float(min(value, DELAY_CEILING_MS))


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
