"""The ledger's clock: the one time every process of a deployment compares (issue 17).

Hosts' clocks disagree; the ledger's does not. Statements that compare or set a lease, a due time
or a sweep's horizon read the database's own clock (`ledger_now()`, inside the statement). Values
that Python must compute before it writes them (a retry's due time, a new state's timestamps) come
from `now(url)`: the database's clock, read once and then advanced by this host's monotonic clock,
which no wall-clock step or skew moves. It is re-read every `RESYNC_SECONDS`, and it runs ahead of
the ledger by at most one round trip, never behind, so a duration measured across it is never negative.

The embedded SQLite ledger lives on one machine: its clock is that machine's (`time.time()` at
each resync), advanced the same way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .db import bare_engine, is_postgres

RESYNC_SECONDS = 30.0
SAMPLES = 3  # round trips per resync; the fastest one bounds the error


class ledger_now(FunctionElement[float]):
    """The database's clock, in epoch seconds, fixed for the duration of one statement."""

    type = Float()
    inherit_cache = True


@compiles(ledger_now, "postgresql")
def _postgres_now(element: ledger_now, compiler: Any, **kw: Any) -> str:
    # statement_timestamp(): one value across a statement's CTEs, unlike clock_timestamp().
    return "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)"


@compiles(ledger_now)
def _sqlite_now(element: ledger_now, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass
class _Anchor:
    ledger: float  # the ledger's time at `mono`, rounded up by the read's round trip
    mono: float


_anchors: dict[str, _Anchor] = {}
_lock = threading.Lock()


def now(url: str) -> float:
    """The ledger's current time (epoch seconds), without a round trip except every RESYNC_SECONDS."""
    mono = time.monotonic()
    anchor = _anchors.get(url)
    if anchor is None or mono - anchor.mono > RESYNC_SECONDS:
        anchor = _resync(url, anchor)
    return anchor.ledger + (time.monotonic() - anchor.mono)


def _resync(url: str, previous: _Anchor | None) -> _Anchor:
    if not is_postgres(url):  # SQLite's clock is this machine's: no round trip to measure
        anchor = _Anchor(time.time(), time.monotonic())
        _anchors[url] = anchor
        return anchor
    with _lock:
        try:
            with bare_engine(url).connect() as conn:
                best: tuple[float, float, float] | None = None
                for _ in range(SAMPLES):
                    sent = time.monotonic()
                    ledger = float(conn.execute(select(ledger_now())).scalar_one())
                    received = time.monotonic()
                    if best is None or received - sent < best[1] - best[0]:
                        best = (sent, received, ledger)
        except Exception:
            if previous is None:
                raise
            return previous  # the ledger is unreachable: keep counting from the last reading
        assert best is not None
        sent, received, ledger = best
        # The ledger read its clock somewhere between `sent` and `received`: anchoring that reading at
        # `sent` puts this clock ahead by at most the round trip, never behind the ledger.
        anchor = _Anchor(ledger, sent)
        _anchors[url] = anchor
        return anchor


def forget(url: str | None = None) -> None:
    """Drop the cached reading (of one ledger, or all): the next `now` reads the ledger again."""
    with _lock:
        if url is None:
            _anchors.clear()
        else:
            _anchors.pop(url, None)
