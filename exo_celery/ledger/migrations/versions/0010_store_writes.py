"""Which state wrote which store key: one row per key a state wrote, in the transaction that completed it.

The dashboard and the API show a state's store writes from it; retention deletes it with its run.

Revision ID: 0010_store_writes
Revises: 0009_idempotency_key
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_store_writes"
down_revision = "0009_idempotency_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A ledger adopted from before migrations was made from the current models: it may have it already.
    if "exo_store_writes" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "exo_store_writes",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("state_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("written_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("state_id", "key"),
    )
    op.create_index("ix_exo_store_writes_run_id", "exo_store_writes", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_exo_store_writes_run_id", table_name="exo_store_writes")
    op.drop_table("exo_store_writes")
