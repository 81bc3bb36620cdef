"""Runtimes and the nodes each serves, with a heartbeat: which nodes have a live runtime.

Revision ID: 0004_runtimes
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_runtimes"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A ledger adopted from `create_all` (tests build one from today's models) may have them already.
    if sa.inspect(op.get_bind()).has_table("exo_runtimes"):
        return
    op.create_table(
        "exo_runtimes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("stale_after", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_exo_runtimes_heartbeat_at", "exo_runtimes", ["heartbeat_at"])
    op.create_table(
        "exo_runtime_nodes",
        sa.Column("runtime_id", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("runtime_id", "node_name"),
    )
    op.create_index("ix_exo_runtime_nodes_node", "exo_runtime_nodes", ["namespace", "node_name"])


def downgrade() -> None:
    op.drop_index("ix_exo_runtime_nodes_node", table_name="exo_runtime_nodes")
    op.drop_table("exo_runtime_nodes")
    op.drop_index("ix_exo_runtimes_heartbeat_at", table_name="exo_runtimes")
    op.drop_table("exo_runtimes")
