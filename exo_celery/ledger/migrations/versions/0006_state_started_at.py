"""States record when their current attempt started (`started_at`), for the latency metrics.

Set by the claim that takes a state's lease; queued-to-started is `started_at - due_at` and
execution time is `updated_at - started_at` once the state is terminal.

Revision ID: 0006_state_started_at
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_state_started_at"
down_revision = "0004_runtimes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A ledger adopted from tables made by `create_all` may have the column already.
    if "started_at" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("exo_states")}:
        return
    with op.batch_alter_table("exo_states") as batch:
        batch.add_column(sa.Column("started_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exo_states") as batch:
        batch.drop_column("started_at")
