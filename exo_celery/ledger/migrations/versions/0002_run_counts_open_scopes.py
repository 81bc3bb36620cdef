"""Runs count open scopes instead of the states inside them.

A state inside a join's or unite's region now moves only its scopes; the run
counts each open scope once. Recount the runs still in flight to match.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ACTIVE_RUNS = "status IN ('PENDING', 'RUNNING')"


def upgrade() -> None:
    op.execute(
        "UPDATE exo_runs SET outstanding = "
        "(SELECT COUNT(*) FROM exo_states s WHERE s.run_id = exo_runs.id"
        " AND s.status IN ('CREATED', 'QUEUED', 'EXECUTED') AND CAST(s.scopes AS TEXT) = '{}')"
        " + (SELECT COUNT(*) FROM exo_scopes c WHERE c.run_id = exo_runs.id AND c.outstanding > 0)"
        f" WHERE {_ACTIVE_RUNS}"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE exo_runs SET outstanding = (SELECT COUNT(*) FROM exo_states s WHERE s.run_id = exo_runs.id"
        f" AND s.status IN ('CREATED', 'QUEUED', 'EXECUTED')) WHERE {_ACTIVE_RUNS}"
    )
