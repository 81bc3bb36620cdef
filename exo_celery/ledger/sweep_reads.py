"""What beat's sweep reads about a few states: when they were last dispatched (issue 13, item 11)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from .tables import states


def dispatched_at(engine: Engine, state_ids: list[str]) -> dict[str, float]:
    """The last dispatch time (ledger clock) of each of these states that exists and has one."""
    if not state_ids:
        return {}
    found = select(states.c.id, states.c.dispatched_at).where(
        states.c.id.in_(state_ids), states.c.dispatched_at.is_not(None)
    )
    with engine.connect() as conn:
        return {sid: float(at) for sid, at in conn.execute(found).all()}
