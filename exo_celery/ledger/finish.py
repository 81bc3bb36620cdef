"""The compare-and-set that records an execution, merged into the first counter move on PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ..outcomes import CounterName
from .access import LedgerAccess
from .statements import (
    FINISH_STATE,
    MOVE_RUN,
    MOVE_RUN_NOTIFYING,
    MOVE_SCOPE,
    finish_creating,
    finish_in_open_scope,
    finish_then,
)


class NotOurs(Exception):  # internal control flow: caught by the completion, never reaches users
    """The state was finished by another delivery, or its lease was taken over: change nothing."""


class Finish:
    """The compare-and-set of a completing state (`moves.COMPLETE`). On PostgreSQL it rides in the first
    counter move of the transaction (one statement, one round trip less); `flush` sends it on its own otherwise."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params: dict[str, Any] | None = params

    def flush(self, conn: Connection) -> None:
        """Send the compare-and-set now, if no counter move took it; NotOurs if it changed nothing."""
        if self.params is not None:
            params, self.params = self.params, None
            if not conn.execute(FINISH_STATE, params).rowcount:
                raise NotOurs

    def _take(self) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The columns to set, and the parameters of a merged statement (`v_<column>`)."""
        assert self.params is not None
        finish, self.params = self.params, None
        columns = tuple(k for k in finish if not k.startswith("p_"))
        return columns, {"p_id": finish["p_id"], "p_token": finish["p_token"], **{f"v_{c}": finish[c] for c in columns}}

    def in_open_scope(self, access: LedgerAccess, scope_id: str, pruned: int) -> bool:
        """PostgreSQL, autocommitted: finish the state and move its one scope by -1 in one statement.
        False, and nothing changed, if that would empty the scope or the state is not ours."""
        columns, params = self._take()
        params.update(p_scope=scope_id, p_delta=-1, p_pruned=pruned)
        return access.first(finish_in_open_scope(columns), params) is not None

    def creating(self, access: LedgerAccess, new_rows: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """PostgreSQL, autocommitted: the compare-and-set, the inserts of `new_rows` and MOVE_RUN in one
        statement (`finish_creating`); the run's row as moved, or NotOurs and nothing changed."""
        columns, merged = self._take()
        moved = access.first(finish_creating(columns), {**merged, **params, "p_rows": new_rows})
        if moved is None:
            raise NotOurs
        return moved

    def moving_run(self, access: LedgerAccess, params: dict[str, Any]) -> None:
        """PostgreSQL, autocommitted: the compare-and-set and MOVE_RUN_NOTIFYING in one statement
        (`finish_then`); NotOurs, and nothing changed, if the state was not ours."""
        columns, merged = self._take()
        if access.first(finish_then(columns, "run"), {**merged, **params}) is None:
            raise NotOurs

    def move(self, conn: Connection, counter: CounterName, params: dict[str, Any]) -> Any:
        """MOVE_SCOPE (`counter="scope"`) or MOVE_RUN (`"run"`), with the compare-and-set if still pending."""
        if self.params is None:
            if counter == "scope":
                return conn.execute(MOVE_SCOPE, params).first()
            postgres = conn.dialect.name == "postgresql"
            return conn.execute(MOVE_RUN_NOTIFYING if postgres else MOVE_RUN, params).first()
        columns, merged = self._take()
        moved = conn.execute(finish_then(columns, counter), {**merged, **params}).first()
        if moved is None:
            raise NotOurs
        return moved
