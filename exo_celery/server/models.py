"""Request and response bodies of the HTTP API: Exosphere's state-manager v0 shapes, and ours beside them.

Responses allow extra keys (ours add some, as SPEC section 1 permits).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every refusal: one `detail` text (or, for an invalid graph, the list of problems)."""

    detail: Any


class UpsertGraphRequest(BaseModel):
    """Exosphere's `UpsertGraphTemplateRequest`."""

    model_config = ConfigDict(extra="forbid")
    secrets: dict[str, str] = Field(default_factory=dict, description="secrets used while the graph runs")
    nodes: list[dict[str, Any]] = Field(..., description="the node templates (GraphNodeModel)")
    retry_policy: dict[str, Any] | None = Field(None, description="graph retry policy")
    store_config: dict[str, Any] | None = Field(None, description="required keys and default values")
    triggers: list[Any] | None = Field(None, description='cron triggers: {"type": "CRON", "value": {...}}')


class GraphResponse(_Open):
    """Exosphere's `UpsertGraphTemplateResponse` (secret values are masked)."""

    name: str
    namespace: str
    nodes: list[dict[str, Any]]
    secrets: dict[str, Any]
    retry_policy: dict[str, Any] | None = None
    store_config: dict[str, Any] | None = None
    triggers: list[Any] = Field(default_factory=list)
    version: int
    created_at: str | None = None
    updated_at: str | None = None
    validation_status: str
    validation_errors: list[str] | None = None


class TriggerRequest(BaseModel):
    """Exosphere's `TriggerGraphRequestModel`."""

    store: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    start_delay: int = Field(0, ge=0, le=10 * 365 * 24 * 3600 * 1000, description="milliseconds")


class TriggerResponse(_Open):
    """Exosphere's `TriggerGraphResponseModel`: `status` CREATED and the new `run_id`."""

    status: str
    run_id: str


class ManualRetryRequest(BaseModel):
    """Exosphere's `ManualRetryRequestModel`; `fanout_id` is accepted and not needed here."""

    fanout_id: str | None = None


class ManualRetryResponse(_Open):
    """Exosphere's `ManualRetryResponseModel`: the new state's id and status (ours add retry_of, run_id)."""

    id: str
    status: str


class RunListItem(_Open):
    run_id: str
    graph_name: str
    success_count: int
    pending_count: int
    errored_count: int
    retried_count: int
    total_count: int
    status: str
    created_at: str | None


class RunsResponse(_Open):
    """Exosphere's `RunsResponse`."""

    namespace: str
    total: int
    page: int
    size: int
    runs: list[RunListItem]


class GraphNode(_Open):
    id: str
    node_name: str
    identifier: str
    status: str
    error: str | None = None


class GraphEdge(BaseModel):
    source: str
    target: str


class GraphStructureResponse(_Open):
    """Exosphere's `GraphStructureResponse` (nodes are states; capped, with `truncated` when capped)."""

    root_states: list[GraphNode]
    graph_name: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    node_count: int
    edge_count: int
    execution_summary: dict[str, int]


class StoreWrite(BaseModel):
    """Ours: one store key a state wrote when it completed (secrets masked)."""

    key: str
    value: str
    written_at: str | None


class NodeRunDetailsResponse(_Open):
    """Exosphere's `NodeRunDetailsResponse` for one state."""

    id: str
    node_name: str
    identifier: str
    graph_name: str
    run_id: str
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    error: str | None = None
    parents: dict[str, Any]
    created_at: str | None
    updated_at: str | None
    store_writes: list[StoreWrite] = Field(default_factory=list, description="ours: the store keys it wrote")


class NamespacesResponse(BaseModel):
    namespaces: list[str]
    count: int


class RegisteredNode(_Open):
    name: str
    namespace: str
    runtime_name: str
    runtime_namespace: str
    inputs_schema: dict[str, Any]
    outputs_schema: dict[str, Any]
    secrets: list[str]


class NodesResponse(BaseModel):
    namespace: str
    count: int
    nodes: list[RegisteredNode]


class GraphTemplateItem(_Open):
    name: str
    namespace: str
    nodes: list[dict[str, Any]]
    validation_status: str
    version: int


class GraphTemplatesResponse(BaseModel):
    namespace: str
    count: int
    templates: list[GraphTemplateItem]


class RunResponse(_Open):
    """Ours: a run and its states counted by status."""

    run_id: str
    graph_name: str
    namespace: str
    status: str
    counts: dict[str, int] = Field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class StateItem(_Open):
    id: str
    identifier: str
    node_name: str
    status: str
    run_id: str
    retry_count: int


class StatesResponse(BaseModel):
    """Ours: one page of a run's states."""

    run_id: str
    total: int
    page: int
    size: int
    states: list[StateItem]
