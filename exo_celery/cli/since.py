"""`--since` values: an ISO 8601 time (UTC when it names no zone) or an age like `90s`, `10m`, `2h`, `1d`, `1w`."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ..errors import ArgumentError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_since(text: str, now: float) -> float:
    """Epoch seconds for `text`; ArgumentError (a ValueError) naming the accepted forms otherwise."""
    value = text.strip()
    age = _AGE.fullmatch(value.lower())
    if age:
        return now - float(age.group(1)) * _UNITS[age.group(2)]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ArgumentError(
            f"{text!r} is neither an ISO time (2026-12-01T09:30, 2026-12-01T09:30+02:00) "
            "nor an age (90s, 10m, 2h, 1d, 1w)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
