"""Cron trigger times: pure functions over 5-field expressions, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a usable 5-field cron expression, or None if it is."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        return f"cron expression {expression!r} must have exactly 5 fields (minute hour day month weekday)"
    if not croniter.is_valid(expression):
        return f"cron expression {expression!r} does not parse"
    return None


def fire_times(expression: str, after: datetime, until: datetime) -> list[datetime]:
    """Fire times in (after, until], UTC, oldest first."""
    start = after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC)
    end = until.astimezone(UTC) if until.tzinfo else until.replace(tzinfo=UTC)
    times: list[datetime] = []
    itr = croniter(expression, start)
    while True:
        nxt = itr.get_next(datetime)
        if nxt > end:
            return times
        times.append(nxt)


def next_fire(expression: str, after: datetime) -> datetime:
    """The first fire time strictly after `after`, UTC."""
    start = after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC)
    result: datetime = croniter(expression, start).get_next(datetime)
    return result
