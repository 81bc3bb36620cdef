"""Beat heartbeats: one row per beat process, refreshed every tick (read by `exo-celery beat --check`).

Revision ID: 0007_heartbeats
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_heartbeats"
down_revision = "0006_state_started_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("exo_heartbeats"):
        return  # a ledger made by `create_all` of these models, then adopted at the baseline revision
    op.create_table(
        "exo_heartbeats",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("beat_at", sa.Float(), nullable=False),
        sa.Column("sweep_interval", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("exo_heartbeats")
