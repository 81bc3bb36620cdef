"""Cron trigger times: pure functions over 5-field expressions, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import CroniterBadDateError, croniter

from .errors import CronError

# Where cron_problem looks for a first fire time: a fixed instant, so the answer never depends on the clock.
_PROBE_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a tz-naive datetime is taken to be UTC already."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a usable 5-field cron expression, or None if it is."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        return f"cron expression {expression!r} must have exactly 5 fields (minute hour day month weekday)"
    try:
        valid = croniter.is_valid(expression)
    except Exception:  # croniter raises on some malformed inputs instead of answering False
        valid = False
    if not valid:
        return f"cron expression {expression!r} does not parse"
    try:
        croniter(expression, _PROBE_FROM).get_next(datetime)
    except CroniterBadDateError:
        # e.g. "0 0 31 2 *" (31 February): valid syntax, but it would never fire.
        return f"cron expression {expression!r} never fires (no date matches it)"
    return None


def fire_times(expression: str, after: datetime, until: datetime) -> list[datetime]:
    """Fire times in (after, until], UTC, oldest first; tz-naive bounds are taken as UTC."""
    start, end = _utc(after), _utc(until)
    times: list[datetime] = []
    if end <= start:
        return times
    itr = croniter(expression, start)
    while True:
        try:
            nxt: datetime = itr.get_next(datetime)
        except CroniterBadDateError:  # an expression that never fires has no times, not an error
            return times
        if nxt > end:
            return times
        times.append(nxt)


def next_fire(expression: str, after: datetime) -> datetime:
    """The first fire time strictly after `after`, UTC (tz-naive `after` is taken as UTC)."""
    try:
        result: datetime = croniter(expression, _utc(after)).get_next(datetime)
    except CroniterBadDateError as exc:
        raise CronError(f"cron expression {expression!r} has no fire time after {after.isoformat()}") from exc
    return result
