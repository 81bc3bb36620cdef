"""A table of facts about the ledger: the fingerprint of the secrets key every process must share.

Revision ID: 0008_secrets_key_fingerprint
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_secrets_key_fingerprint"
down_revision = "0007_heartbeats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exo_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("exo_meta")
