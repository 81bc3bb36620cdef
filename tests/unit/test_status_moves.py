"""status.TRANSITIONS is the one table every ledger status update obeys (ledger/moves.py, issue 16 item 5).

Every statement in the ledger that sets a state's status takes the new status from a declared move
(checked here by reading the ledger's source), every declared move is in the table, and every entry of
the table is made by some move. The completion's target is planned at run time: test_plan checks that
every status `plan_outcome` picks is one of `moves.COMPLETE`'s targets.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import exo_celery.ledger
from exo_celery.ledger import moves
from exo_celery.status import TRANSITIONS, StateStatus, can_transition

LEDGER = Path(exo_celery.ledger.__file__).parent
MOVE_NAMES = {name for name, value in vars(moves).items() if isinstance(value, moves.Move)}


def _updates_states(call: ast.Call) -> bool:
    """Whether a `.values(...)` call belongs to an `update(states)...` chain."""
    node: ast.expr = call.func
    while True:
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "update":
                return bool(node.args) and isinstance(node.args[0], ast.Name) and node.args[0].id == "states"
            node = node.func
        else:
            return False


def status_writes() -> list[tuple[str, int, ast.expr]]:
    """Every `status=` given to an UPDATE of the states table in the ledger: (file, line, value)."""
    found = []
    for path in sorted(LEDGER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "values" or not _updates_states(node):
                continue
            for keyword in node.keywords:
                if keyword.arg == "status" or keyword.arg is None:
                    found.append((path.name, node.lineno, keyword.value))
    return found


def test_the_ledger_sets_a_state_status_only_through_a_declared_move() -> None:
    writes = status_writes()
    assert len(writes) >= 5  # release, two cancels, the cancel of a completion's children, manual retry
    for where, line, value in writes:
        assert isinstance(value, ast.Attribute) and value.attr == "target", f"{where}:{line}"
        assert isinstance(value.value, ast.Name) and value.value.id in MOVE_NAMES, f"{where}:{line}"


def test_every_declared_move_is_in_the_table() -> None:
    for move in moves.MOVES.values():
        for source in move.sources:
            for target in move.targets:
                assert can_transition(source, target), (move.name, source, target)


def test_the_table_has_no_entry_no_move_makes() -> None:
    made = {(s, t) for move in moves.MOVES.values() for s in move.sources for t in move.targets}
    table = {(s, t) for s, targets in TRANSITIONS.items() for t in targets}
    assert table == made
    assert set(TRANSITIONS) == set(StateStatus)


def test_declaring_a_move_the_table_forbids_fails() -> None:
    with pytest.raises(AssertionError, match="SUCCESS->QUEUED"):
        moves.declare("bad", {StateStatus.SUCCESS}, {StateStatus.QUEUED})
    assert "bad" not in moves.MOVES
