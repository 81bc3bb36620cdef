"""Retry delays: Exosphere's nine strategies, jitter bounds, capping, defaults and range checks."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from exo_celery import GraphValidationError
from exo_celery.graph import RetryPolicyModel, parse_graph_parts
from exo_celery.retry import DELAY_CEILING_MS, RetryStrategyEnum, base_delay, compute_delay

S = RetryStrategyEnum
NODE = {"node_name": "Echo", "namespace": "t", "identifier": "a"}
SAMPLES = 400


def test_defaults_match_exosphere() -> None:
    policy = RetryPolicyModel()
    assert policy.max_retries == 3
    assert policy.strategy is S.EXPONENTIAL
    assert policy.backoff_factor == 2000
    assert policy.exponent == 2
    assert policy.max_delay is None
    assert [policy.compute_delay(n) for n in (1, 2, 3)] == [2000, 4000, 8000]


def test_there_are_nine_strategies() -> None:
    families = ("EXPONENTIAL", "LINEAR", "FIXED")
    assert {s.value for s in S} == {f + v for f in families for v in ("", "_FULL_JITTER", "_EQUAL_JITTER")}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (S.EXPONENTIAL, [1000, 3000, 9000, 27000]),
        (S.LINEAR, [1000, 2000, 3000, 4000]),
        (S.FIXED, [1000, 1000, 1000, 1000]),
    ],
)
def test_non_jitter_strategies_exact(strategy: RetryStrategyEnum, expected: list[int]) -> None:
    policy = RetryPolicyModel(strategy=strategy, backoff_factor=1000, exponent=3)
    assert [policy.compute_delay(n) for n in (1, 2, 3, 4)] == expected
    # Deterministic: no randomness drawn even with an rng given.
    assert [policy.compute_delay(n, random.Random(5)) for n in (1, 2, 3, 4)] == expected


BASES = {
    "EXPONENTIAL": [1000, 3000, 9000, 27000],
    "LINEAR": [1000, 2000, 3000, 4000],
    "FIXED": [1000, 1000, 1000, 1000],
}


@pytest.mark.parametrize("family", list(BASES))
def test_full_jitter_within_zero_and_base(family: str) -> None:
    policy = RetryPolicyModel(strategy=S(f"{family}_FULL_JITTER"), backoff_factor=1000, exponent=3)
    rng = random.Random(1234)
    for n, base in zip((1, 2, 3, 4), BASES[family], strict=True):
        draws = [policy.compute_delay(n, rng) for _ in range(SAMPLES)]
        assert all(0 <= d <= base for d in draws), (n, min(draws), max(draws))
        # Spread over the whole range, not stuck at one end.
        assert min(draws) < base * 0.1 and max(draws) > base * 0.9
        assert all(isinstance(d, int) for d in draws)


@pytest.mark.parametrize("family", list(BASES))
def test_equal_jitter_within_half_base_and_base(family: str) -> None:
    policy = RetryPolicyModel(strategy=S(f"{family}_EQUAL_JITTER"), backoff_factor=1000, exponent=3)
    rng = random.Random(99)
    for n, base in zip((1, 2, 3, 4), BASES[family], strict=True):
        draws = [policy.compute_delay(n, rng) for _ in range(SAMPLES)]
        assert all(base / 2 <= d <= base for d in draws), (n, min(draws), max(draws))
        assert min(draws) < base * 0.55 and max(draws) > base * 0.95


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicyModel(strategy=S.EXPONENTIAL_FULL_JITTER)
    first = [policy.compute_delay(n, random.Random(7)) for n in range(1, 5)]
    again = [policy.compute_delay(n, random.Random(7)) for n in range(1, 5)]
    assert first == again


def test_max_delay_caps_exponential_as_in_the_docs() -> None:
    policy = RetryPolicyModel(strategy=S.EXPONENTIAL, backoff_factor=2000, exponent=2, max_delay=10000)
    assert [policy.compute_delay(n) for n in (1, 2, 3, 4, 5)] == [2000, 4000, 8000, 10000, 10000]


@pytest.mark.parametrize("strategy", [S.LINEAR, S.FIXED])
def test_max_delay_caps_linear_and_fixed(strategy: RetryStrategyEnum) -> None:
    policy = RetryPolicyModel(strategy=strategy, backoff_factor=5000, max_delay=3000)
    assert [policy.compute_delay(n) for n in (1, 2, 3)] == [3000, 3000, 3000]


def test_cap_applies_after_full_jitter() -> None:
    # base 8000 at retry 4; full jitter draws in [0, 8000], then capped at 3000: draws below the cap survive.
    policy = RetryPolicyModel(strategy=S.EXPONENTIAL_FULL_JITTER, backoff_factor=1000, exponent=2, max_delay=3000)
    rng = random.Random(3)
    draws = [policy.compute_delay(4, rng) for _ in range(SAMPLES)]
    assert all(0 <= d <= 3000 for d in draws)
    assert any(d < 3000 for d in draws)  # jitter first: not always the cap
    assert sum(d == 3000 for d in draws) > SAMPLES / 2  # most draws (~5/8) exceed the cap


def test_cap_applies_after_equal_jitter() -> None:
    # base 8000: equal jitter gives [4000, 8000], always above a 3000 cap.
    policy = RetryPolicyModel(strategy=S.EXPONENTIAL_EQUAL_JITTER, backoff_factor=1000, exponent=2, max_delay=3000)
    rng = random.Random(4)
    assert {policy.compute_delay(4, rng) for _ in range(50)} == {3000}


def test_retry_zero_or_negative_counts_as_first_retry() -> None:
    policy = RetryPolicyModel(strategy=S.LINEAR, backoff_factor=100)
    assert policy.compute_delay(0) == policy.compute_delay(-3) == policy.compute_delay(1) == 100


def test_module_function_matches_method() -> None:
    assert compute_delay(S.LINEAR, 300, 2, None, 3) == 900
    assert compute_delay(S.EXPONENTIAL, 300, 2, 1000, 3) == 1000
    assert base_delay(S.EXPONENTIAL, 300, 2, 3) == 1200.0


def test_huge_in_range_policy_does_not_overflow() -> None:
    # Allowed policy: exponent 100, 1000 retries. 2000 * 100**999 does not fit a float.
    policy = RetryPolicyModel(max_retries=1000, exponent=100, strategy=S.EXPONENTIAL)
    assert policy.compute_delay(1000) == DELAY_CEILING_MS
    jitter = RetryPolicyModel(max_retries=1000, exponent=100, strategy=S.EXPONENTIAL_FULL_JITTER, max_delay=60000)
    assert 0 <= jitter.compute_delay(1000, random.Random(1)) <= 60000
    equal = RetryPolicyModel(max_retries=1000, exponent=100, strategy=S.EXPONENTIAL_EQUAL_JITTER)
    assert DELAY_CEILING_MS / 2 <= equal.compute_delay(1000, random.Random(1)) <= DELAY_CEILING_MS


def test_ceiling_does_not_touch_ordinary_delays() -> None:
    policy = RetryPolicyModel(strategy=S.EXPONENTIAL, backoff_factor=2000, exponent=2)
    assert policy.compute_delay(30) == 2000 * 2**29


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_retries", -1),
        ("backoff_factor", 0),
        ("backoff_factor", -5),
        ("exponent", 0),
        ("exponent", -2),
        ("max_delay", 0),
        ("max_delay", -1),
        ("strategy", "SOMETIMES"),
    ],
)
def test_out_of_range_policy_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicyModel(**{field: value})
    assert field in str(info.value)


def test_unknown_policy_field_rejected() -> None:
    with pytest.raises(ValidationError, match="max_retry"):
        RetryPolicyModel.model_validate({"max_retry": 3})


def test_policy_from_exosphere_json() -> None:
    _, policy, _, _ = parse_graph_parts(
        "g",
        [NODE],
        {"max_retries": 5, "strategy": "LINEAR_EQUAL_JITTER", "backoff_factor": 500, "exponent": 3, "max_delay": 900},
    )
    assert policy.strategy is S.LINEAR_EQUAL_JITTER
    assert policy.max_retries == 5 and policy.max_delay == 900


def test_parse_graph_parts_lists_every_policy_problem() -> None:
    bad = {"max_retries": -1, "backoff_factor": 0, "exponent": 0, "max_delay": 0}
    with pytest.raises(GraphValidationError) as info:
        parse_graph_parts("g", [NODE], bad)
    errors = info.value.errors
    assert len(errors) == 4, errors
    for field in bad:
        assert any(e.startswith(f"retry_policy.{field}:") for e in errors), (field, errors)
    assert info.value.graph_name == "g"
    assert "retry_policy.max_retries" in str(info.value)


def test_parse_graph_parts_collects_policy_and_node_errors_together() -> None:
    with pytest.raises(GraphValidationError) as info:
        parse_graph_parts("g", [{"identifier": "a"}], {"exponent": 0}, triggers=[{"expression": "* * * * *", "x": 1}])
    errors = info.value.errors
    assert any(e.startswith("nodes[0].node_name") for e in errors), errors
    assert any(e.startswith("retry_policy.exponent") for e in errors), errors
    assert any(e.startswith("triggers[0]") for e in errors), errors
