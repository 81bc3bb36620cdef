"""The initial ledger: graphs, nodes, runs, states, scopes, store.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exo_graphs",
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("secrets_cipher", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", "version"),
    )
    op.create_table(
        "exo_nodes",
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("schema", sa.JSON(), nullable=False),
        sa.Column("runtime_name", sa.String(length=256), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "node_name"),
    )
    op.create_table(
        "exo_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("graph_name", sa.String(length=128), nullable=False),
        sa.Column("graph_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outstanding", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("cron_key", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cron_key"),
    )
    op.create_index("ix_exo_runs_created_at", "exo_runs", ["created_at"])
    op.create_index("ix_exo_runs_graph_created", "exo_runs", ["graph_name", "created_at"])
    op.create_index("ix_exo_runs_status", "exo_runs", ["status"])
    op.create_table(
        "exo_scopes",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("barrier", sa.String(length=128), nullable=False),
        sa.Column("opener_id", sa.String(length=32), nullable=False),
        sa.Column("outstanding", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("pruned", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_exo_scopes_run_id", "exo_scopes", ["run_id"])
    op.create_table(
        "exo_states",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("graph_namespace", sa.String(length=128), nullable=False),
        sa.Column("graph_name", sa.String(length=128), nullable=False),
        sa.Column("graph_version", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=128), nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("parents", sa.JSON(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("branch", sa.Text(), nullable=False),
        sa.Column("execution_id", sa.String(length=32), nullable=True),
        sa.Column("fingerprint", sa.String(length=300), nullable=True),
        sa.Column("retry_of", sa.String(length=32), nullable=True),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("dispatched_at", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint", name="uq_exo_states_fingerprint"),
        sa.UniqueConstraint("retry_of", name="uq_exo_states_retry_of"),
    )
    op.create_index("ix_exo_states_run_identifier", "exo_states", ["run_id", "identifier"])
    op.create_index("ix_exo_states_status_due", "exo_states", ["status", "due_at"])
    op.create_table(
        "exo_store",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )


def downgrade() -> None:
    op.drop_table("exo_store")
    op.drop_index("ix_exo_states_status_due", table_name="exo_states")
    op.drop_index("ix_exo_states_run_identifier", table_name="exo_states")
    op.drop_table("exo_states")
    op.drop_index("ix_exo_scopes_run_id", table_name="exo_scopes")
    op.drop_table("exo_scopes")
    op.drop_index("ix_exo_runs_status", table_name="exo_runs")
    op.drop_index("ix_exo_runs_graph_created", table_name="exo_runs")
    op.drop_index("ix_exo_runs_created_at", table_name="exo_runs")
    op.drop_table("exo_runs")
    op.drop_table("exo_nodes")
    op.drop_table("exo_graphs")
