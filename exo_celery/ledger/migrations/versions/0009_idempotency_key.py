"""Runs can carry an idempotency key: a trigger that repeats a key gets the run it made before.

Unique per namespace (`trigger(..., idempotency_key=...)`, `exo-celery trigger --idempotency-key`).

Revision ID: 0009_idempotency_key
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_idempotency_key"
down_revision = "0008_secrets_key_fingerprint"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A ledger adopted from before migrations was made from the current models: it may have both already.
    found = sa.inspect(op.get_bind())
    if "idempotency_key" not in {c["name"] for c in found.get_columns("exo_runs")}:
        op.add_column("exo_runs", sa.Column("idempotency_key", sa.String(length=300), nullable=True))
    if "ux_exo_runs_idempotency_key" not in {i["name"] for i in found.get_indexes("exo_runs")}:
        op.create_index("ux_exo_runs_idempotency_key", "exo_runs", ["namespace", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_exo_runs_idempotency_key", table_name="exo_runs")
    with op.batch_alter_table("exo_runs") as batch:
        batch.drop_column("idempotency_key")
