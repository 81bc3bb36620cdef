"""Cron triggers: which expressions are usable, and their fire times in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from exo_celery.cron import cron_problem, fire_times, next_fire
from exo_celery.graph import CronTrigger, parse_trigger

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "expression",
    ["* * * * *", "0 2 * * *", "*/15 * * * *", "0 */4 * * 1-5", "30 6 1 * mon", "0 0 29 2 *", "5,10 0-3 * jan *"],
)
def test_valid_five_field_expressions(expression: str) -> None:
    assert cron_problem(expression) is None


@pytest.mark.parametrize("expression", ["0 0 * * * *", "* * * *", "", "garbage", "@hourly", "0 0 1 1 * 2030"])
def test_wrong_field_count_named(expression: str) -> None:
    problem = cron_problem(expression)
    assert problem is not None
    assert repr(expression) in problem and "5 fields" in problem


@pytest.mark.parametrize(
    "expression", ["61 * * * *", "* 24 * * *", "* * 32 * *", "* * * 13 *", "a b c d e", "* * * * 8"]
)
def test_bad_field_values_named(expression: str) -> None:
    problem = cron_problem(expression)
    assert problem is not None
    assert repr(expression) in problem and "does not parse" in problem


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *"])
def test_expression_that_never_fires_is_a_problem(expression: str) -> None:
    problem = cron_problem(expression)
    assert problem is not None and "never fires" in problem and repr(expression) in problem


def test_non_string_is_a_problem() -> None:
    assert cron_problem(None) is not None  # type: ignore[arg-type]
    assert cron_problem(5) is not None  # type: ignore[arg-type]


def test_every_minute_over_three_minutes_gives_three_times() -> None:
    times = fire_times("* * * * *", T0, T0 + timedelta(minutes=3))
    assert times == [T0 + timedelta(minutes=m) for m in (1, 2, 3)]
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)


def test_window_is_open_at_start_closed_at_end() -> None:
    assert fire_times("* * * * *", T0, T0) == []
    assert fire_times("* * * * *", T0 - timedelta(seconds=1), T0) == [T0]
    assert fire_times("* * * * *", T0, T0 + timedelta(seconds=59)) == []
    assert fire_times("* * * * *", T0 + timedelta(minutes=5), T0) == []


def test_naive_inputs_are_utc() -> None:
    naive = T0.replace(tzinfo=None)
    assert fire_times("* * * * *", naive, naive + timedelta(minutes=3)) == fire_times(
        "* * * * *", T0, T0 + timedelta(minutes=3)
    )
    assert next_fire("0 * * * *", naive) == datetime(2024, 1, 1, 13, 0, tzinfo=UTC)


def test_aware_inputs_in_other_zones_are_converted_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2024, 1, 1, 14, 0, tzinfo=plus2)  # 12:00 UTC
    # "0 13 * * *" is 13:00 UTC, not 13:00 in the caller's zone.
    assert fire_times("0 13 * * *", local, local + timedelta(hours=2)) == [datetime(2024, 1, 1, 13, 0, tzinfo=UTC)]
    assert next_fire("0 13 * * *", local) == datetime(2024, 1, 1, 13, 0, tzinfo=UTC)


def test_daily_times_across_days() -> None:
    times = fire_times("0 2 * * *", T0, T0 + timedelta(days=3))
    assert times == [datetime(2024, 1, d, 2, 0, tzinfo=UTC) for d in (2, 3, 4)]


def test_next_fire_is_strictly_after() -> None:
    on_the_hour = datetime(2024, 1, 1, 13, 0, tzinfo=UTC)
    assert next_fire("0 * * * *", on_the_hour) == datetime(2024, 1, 1, 14, 0, tzinfo=UTC)
    assert next_fire("0 * * * *", on_the_hour - timedelta(microseconds=1)) == on_the_hour
    assert next_fire("*/15 * * * *", datetime(2024, 1, 1, 12, 7, 30, tzinfo=UTC)) == datetime(
        2024, 1, 1, 12, 15, tzinfo=UTC
    )


def test_leap_day_expression_fires_on_leap_years_only() -> None:
    assert next_fire("0 0 29 2 *", datetime(2024, 3, 1, tzinfo=UTC)) == datetime(2028, 2, 29, tzinfo=UTC)


def test_never_firing_expression_gives_no_times_instead_of_raising() -> None:
    # The beat loops over fire_times for every graph: one bad stored expression must not stop the others.
    assert fire_times("0 0 31 2 *", T0, T0 + timedelta(days=400)) == []
    with pytest.raises(ValueError, match="0 0 31 2"):
        next_fire("0 0 31 2 *", T0)


def test_trigger_forms() -> None:
    assert parse_trigger("0 2 * * *") == CronTrigger(expression="0 2 * * *")
    assert parse_trigger({"expression": "0 2 * * *"}).expression == "0 2 * * *"
    assert parse_trigger({"type": "CRON", "value": {"expression": "0 2 * * *"}}).expression == "0 2 * * *"
    with pytest.raises(ValueError, match="WEBHOOK"):
        parse_trigger({"type": "WEBHOOK", "value": {"expression": "0 2 * * *"}})
    with pytest.raises(ValueError, match="WEBHOOK"):
        CronTrigger(expression="0 2 * * *", type="WEBHOOK")
    with pytest.raises(ValueError, match="timezone"):
        CronTrigger.model_validate({"expression": "0 2 * * *", "timezone": "Europe/Paris"})
