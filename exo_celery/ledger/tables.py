"""The ledger's tables (SQLModel). Times are UTC epoch seconds; ids are uuid4 hex strings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class GraphRow(SQLModel, table=True):
    """One version of a graph template (runs keep theirs); secrets are Fernet-encrypted."""

    __tablename__ = "exo_graphs"

    namespace: str = Field(primary_key=True, max_length=128)
    name: str = Field(primary_key=True, max_length=128)
    version: int = Field(primary_key=True)
    template: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    secrets_cipher: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float


class NodeRow(SQLModel, table=True):
    """A node class a worker registered for its namespace."""

    __tablename__ = "exo_nodes"

    namespace: str = Field(primary_key=True, max_length=128)
    node_name: str = Field(primary_key=True, max_length=128)
    schema_: dict[str, Any] = Field(sa_column=Column("schema", JSON, nullable=False))
    runtime_name: str = Field(default="", max_length=256)
    updated_at: float


class RuntimeRow(SQLModel, table=True):
    """One started runtime (a worker process tree): who it is and its heartbeat, in the ledger's clock."""

    __tablename__ = "exo_runtimes"

    id: str = Field(primary_key=True, max_length=32)
    namespace: str = Field(max_length=128)
    name: str = Field(max_length=256)
    host: str = Field(max_length=256)
    pid: int
    started_at: float
    heartbeat_at: float = Field(index=True)
    stale_after: float  # seconds without a heartbeat after which it is not live (its EXO_LEASE_SECONDS)
    stopped_at: float | None = None


class RuntimeNodeRow(SQLModel, table=True):
    """A node a started runtime serves (it consumes that node's queue); several runtimes may serve one node."""

    __tablename__ = "exo_runtime_nodes"
    __table_args__ = (Index("ix_exo_runtime_nodes_node", "namespace", "node_name"),)

    runtime_id: str = Field(primary_key=True, max_length=32)
    namespace: str = Field(max_length=128)
    node_name: str = Field(primary_key=True, max_length=128)


class RunRow(SQLModel, table=True):
    """One run of a graph; `outstanding` counts its states that are not terminal."""

    __tablename__ = "exo_runs"
    __table_args__ = (
        Index("ix_exo_runs_graph_created", "graph_name", "created_at"),
        Index("ux_exo_runs_idempotency_key", "namespace", "idempotency_key", unique=True),
    )

    id: str = Field(primary_key=True, max_length=32)
    namespace: str = Field(max_length=128)
    graph_name: str = Field(max_length=128)
    graph_version: int
    status: str = Field(max_length=16, index=True)
    outstanding: int = 0
    failed: int = 0
    cron_key: str | None = Field(default=None, max_length=300, unique=True)
    idempotency_key: str | None = Field(default=None, max_length=300)  # unique per namespace (index above)
    created_at: float = Field(index=True)
    started_at: float | None = None
    finished_at: float | None = None


class StateRow(SQLModel, table=True):
    """One state of a run: one execution (or one fan-out output) of one node."""

    __tablename__ = "exo_states"
    __table_args__ = (
        Index("ix_exo_states_run_identifier", "run_id", "identifier"),
        Index("ix_exo_states_status_due", "status", "due_at"),
        UniqueConstraint("fingerprint", name="uq_exo_states_fingerprint"),
        UniqueConstraint("retry_of", name="uq_exo_states_retry_of"),
    )

    id: str = Field(primary_key=True, max_length=32)
    run_id: str = Field(max_length=32)
    namespace: str = Field(max_length=128)
    graph_namespace: str = Field(max_length=128)
    graph_name: str = Field(max_length=128)
    graph_version: int
    identifier: str = Field(max_length=128)
    node_name: str = Field(max_length=128)
    status: str = Field(max_length=24)
    inputs: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    outputs: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    error: str | None = Field(default=None, sa_column=Column(Text))
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    retry_count: int = 0
    parents: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    scopes: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    branch: str = Field(default="", sa_column=Column(Text, nullable=False))
    execution_id: str | None = Field(default=None, max_length=32)
    fingerprint: str | None = Field(default=None, max_length=300)
    retry_of: str | None = Field(default=None, max_length=32)
    due_at: float
    lease_token: str | None = Field(default=None, max_length=32)
    lease_until: float | None = None
    dispatched_at: float | None = None
    started_at: float | None = None  # when the current attempt was claimed
    attempts: int = 0
    created_at: float
    updated_at: float


class ScopeRow(SQLModel, table=True):
    """The barrier of one join or unite in one run: states still outstanding, and how they ended."""

    __tablename__ = "exo_scopes"

    id: str = Field(primary_key=True, max_length=300)
    run_id: str = Field(max_length=32, index=True)
    barrier: str = Field(max_length=128)
    opener_id: str = Field(max_length=32)
    outstanding: int = 0
    failed: int = 0
    pruned: int = 0


class StoreRow(SQLModel, table=True):
    """One key of a run's store."""

    __tablename__ = "exo_store"

    run_id: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=256)
    value: str = Field(sa_column=Column(Text, nullable=False))


class StoreWriteRow(SQLModel, table=True):
    """One store key a state wrote when it completed (its value redacted as `exo_store`'s is)."""

    __tablename__ = "exo_store_writes"

    state_id: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=256)
    run_id: str = Field(max_length=32, index=True)
    value: str = Field(sa_column=Column(Text, nullable=False))
    written_at: float


class MetaRow(SQLModel, table=True):
    """A fact about the ledger itself, by key (e.g. the fingerprint of the secrets key)."""

    __tablename__ = "exo_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float
class HeartbeatRow(SQLModel, table=True):
    """The last tick of one beat process (by name), on the ledger's clock; `exo-celery beat --check` reads it."""

    __tablename__ = "exo_heartbeats"

    name: str = Field(primary_key=True, max_length=256)
    host: str = Field(max_length=256)
    pid: int
    started_at: float
    beat_at: float
    sweep_interval: float


graphs = GraphRow.__table__  # type: ignore[attr-defined]
nodes = NodeRow.__table__  # type: ignore[attr-defined]
runs = RunRow.__table__  # type: ignore[attr-defined]
states = StateRow.__table__  # type: ignore[attr-defined]
scopes = ScopeRow.__table__  # type: ignore[attr-defined]
store = StoreRow.__table__  # type: ignore[attr-defined]
store_writes = StoreWriteRow.__table__  # type: ignore[attr-defined]
meta = MetaRow.__table__  # type: ignore[attr-defined]
runtimes = RuntimeRow.__table__  # type: ignore[attr-defined]
runtime_nodes = RuntimeNodeRow.__table__  # type: ignore[attr-defined]
heartbeats = HeartbeatRow.__table__  # type: ignore[attr-defined]
metadata = SQLModel.metadata
