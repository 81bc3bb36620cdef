"""The JSON API: Exosphere's state-manager v0 routes a client uses, and ours (run, states, wait, cancel).

Writes go through `exo_celery.client.StateManager`; reads through the ledger's read queries. Every
route under `/v0/namespace/{namespace}` checks the caller's key may use that namespace, and a run or
state of another namespace is "not found".
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from ..client import iso
from ..errors import NotFoundError
from ..status import TERMINAL_RUNS, RunStatus, StateStatus
from ..validate import name_problem
from . import models as m
from .auth import KEY_HEADER, SESSION_COOKIE, Principal
from .context import Context

api_key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="an EXO_API_KEY key")

REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": m.ErrorBody, "description": "the request was refused (bad inputs or store)"},
    401: {"model": m.ErrorBody, "description": "missing or invalid API key"},
    403: {"model": m.ErrorBody, "description": "this key may not use the namespace"},
    404: {"model": m.ErrorBody, "description": "not found in this namespace"},
    409: {"model": m.ErrorBody, "description": "does not fit the state's or run's status"},
}


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def principal(request: Request, key: Annotated[str | None, Security(api_key_header)] = None) -> Principal:
    """Who calls: a key from `x-api-key` or the dashboard's session cookie (401 when keys are on and neither fits)."""
    ring = context(request).ring
    if not ring.enabled:
        return Principal()
    found = ring.find(key=key, session=None if key else request.cookies.get(SESSION_COOKIE))
    if found is None:
        raise HTTPException(401, "missing or invalid API key (send it in the x-api-key header)")
    return Principal(found.namespaces, authenticated=True)


def namespace_of(namespace: Annotated[str, Path(max_length=128)], who: Principal = Depends(principal)) -> str:
    """The path's namespace, once the caller may use it (403 otherwise; 404 for a name that cannot exist)."""
    if not who.allows(namespace):
        raise HTTPException(403, "this API key may not use that namespace")
    if name_problem("namespace", namespace) is not None:
        raise NotFoundError(f"namespace {namespace[:80]!r} does not exist")
    return namespace


Namespace = Annotated[str, Depends(namespace_of)]
Ctx = Annotated[Context, Depends(context)]
Page = Annotated[int, Path(ge=1, le=1_000_000)]
Size = Annotated[int, Path(ge=1, le=1000)]

router = APIRouter(prefix="/v0", responses=REFUSALS)


# -- Exosphere's routes ----------------------------------------------------------
@router.get("/namespaces", response_model=m.NamespacesResponse, tags=["namespaces"])
def list_namespaces(ctx: Ctx, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Namespaces that have graphs, registered nodes or runs (only those this key may use)."""
    names = who.visible(ctx.queries.namespaces())
    return {"namespaces": names, "count": len(names)}


@router.put(
    "/namespace/{namespace}/graph/{graph_name}",
    response_model=m.GraphResponse,
    status_code=201,
    tags=["graph"],
    responses={422: {"model": m.ErrorBody, "description": "invalid graph: every problem listed"}},
)
def upsert_graph(namespace: Namespace, graph_name: str, body: m.UpsertGraphRequest, ctx: Ctx) -> dict[str, Any]:
    """Validate and store a new version of a graph template (Exosphere's body); invalid: 422, nothing stored."""
    payload = body.model_dump(exclude_none=True)
    view = ctx.manager(namespace).upsert_graph_json_sync(graph_name, payload)
    return _graph_times(ctx, namespace, graph_name, view)


@router.get("/namespace/{namespace}/graph/{graph_name}", response_model=m.GraphResponse, tags=["graph"])
def get_graph(namespace: Namespace, graph_name: str, ctx: Ctx) -> dict[str, Any]:
    """The latest version of a graph template, secret values masked."""
    return _graph_times(ctx, namespace, graph_name, ctx.manager(namespace).get_graph_sync(graph_name))


def _graph_times(ctx: Context, namespace: str, graph_name: str, view: dict[str, Any]) -> dict[str, Any]:
    row = ctx.repo.load_graph(namespace, graph_name, view["version"])
    view["updated_at"] = iso(row["updated_at"]) if row else None
    view.setdefault("created_at", view["updated_at"])
    return view


@router.post("/namespace/{namespace}/graph/{graph_name}/trigger", response_model=m.TriggerResponse, tags=["graph"])
def trigger_graph(namespace: Namespace, graph_name: str, body: m.TriggerRequest, ctx: Ctx) -> dict[str, Any]:
    """Start a run of the graph's latest version: {"status": "CREATED", "run_id": ...}."""
    return ctx.manager(namespace).trigger_sync(graph_name, body.inputs, body.store, body.start_delay)


@router.post(
    "/namespace/{namespace}/state/{state_id}/manual-retry", response_model=m.ManualRetryResponse, tags=["state"]
)
def manual_retry(
    namespace: Namespace, state_id: str, ctx: Ctx, body: m.ManualRetryRequest | None = None
) -> dict[str, Any]:
    """Retry an ERRORED (or NEXT_CREATED_ERROR, CANCELLED) state; repeating it returns the same retry."""
    ctx.state_in(namespace, state_id)
    result = ctx.manager(namespace).manual_retry_sync(state_id)
    return {"id": result["state_id"], **result}


@router.get("/namespace/{namespace}/runs/{page}/{size}", response_model=m.RunsResponse, tags=["runs"])
def list_runs(
    namespace: Namespace,
    page: Page,
    size: Size,
    ctx: Ctx,
    graph_name: Annotated[str | None, Query(max_length=128)] = None,
    status: RunStatus | None = None,
) -> dict[str, Any]:
    """Runs newest first, with their states counted (ours: optional `graph_name` and `status` filters)."""
    total, found = ctx.queries.runs_page([namespace], graph_name, status.value if status else None, page, size)
    return {"namespace": namespace, "total": total, "page": page, "size": size, "runs": [_run_item(r) for r in found]}


def _run_item(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": r["id"],
        "graph_name": r["graph_name"],
        "status": r["status"],
        "created_at": iso(r["created_at"]),
        "started_at": iso(r["started_at"]),
        "finished_at": iso(r["finished_at"]),
        **{k: r[k] for k in ("success_count", "pending_count", "errored_count", "retried_count", "total_count")},
    }


@router.get("/namespace/{namespace}/states/run/{run_id}/graph", response_model=m.GraphStructureResponse, tags=["runs"])
def graph_structure(
    namespace: Namespace, run_id: str, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> dict[str, Any]:
    """A run's states as nodes and their direct parents as edges (at most `limit` states: see `truncated`)."""
    ctx.run_in(namespace, run_id)
    total, found = ctx.queries.states_page(run_id, size=limit)
    by_id = {s["id"]: s for s in found}
    nodes = [
        {
            "id": s["id"],
            "node_name": s["node_name"],
            "identifier": s["identifier"],
            "status": s["status"],
            "error": ctx.state_view(s)["error"],
        }
        for s in found
    ]
    edges, roots = [], []
    for s, node in zip(found, nodes, strict=True):
        if not s["parents"]:
            roots.append(node)
            continue
        parent = list(s["parents"].values())[-1]
        if parent in by_id:
            edges.append({"source": parent, "target": s["id"]})
    summary = {status.value: 0 for status in StateStatus}
    for status, n in ctx.repo.state_counts(run_id).items():
        summary[status] = n
    graph_name = found[0]["graph_name"] if found else ctx.run_in(namespace, run_id)["graph_name"]
    return {
        "root_states": roots,
        "graph_name": graph_name,
        "nodes": nodes,
        "edges": edges,
        "node_count": len(nodes),
        "edge_count": len(edges),
        "execution_summary": summary,
        "truncated": total > len(found),
    }


@router.get(
    "/namespace/{namespace}/graph/{graph_name}/run/{run_id}/node/{node_id}",
    response_model=m.NodeRunDetailsResponse,
    tags=["runs"],
)
def node_run_details(namespace: Namespace, graph_name: str, run_id: str, node_id: str, ctx: Ctx) -> dict[str, Any]:
    """One state of a run (`node_id` is the state id, as in Exosphere), with the store keys it wrote; secrets masked."""
    run = ctx.run_in(namespace, run_id)
    state = ctx.state_in(namespace, node_id)
    if state["run_id"] != run_id or run["graph_name"] != graph_name:
        raise NotFoundError(f"state {node_id!r} is not in run {run_id!r} of graph {graph_name!r}")
    view = ctx.state_view(state)
    view["outputs"] = view["outputs"] or {}
    view["store_writes"] = ctx.store_writes_view(state)
    return view


@router.get("/namespace/{namespace}/nodes/", response_model=m.NodesResponse, tags=["nodes"])
def list_nodes(namespace: Namespace, ctx: Ctx) -> dict[str, Any]:
    """Nodes registered in the namespace, with their schemas and the runtime that registered them."""
    found = [
        {
            "name": n["node_name"],
            "namespace": n["namespace"],
            "runtime_name": n["runtime_name"],
            "runtime_namespace": n["namespace"],
            "inputs_schema": _schema_part(n["schema"], "inputs"),
            "outputs_schema": _schema_part(n["schema"], "outputs"),
            "secrets": list(n["schema"].get("secrets") or []),
            "updated_at": iso(n["updated_at"]),
        }
        for n in ctx.queries.nodes_in(namespace)
    ]
    return {"namespace": namespace, "count": len(found), "nodes": found}


def _schema_part(schema: dict[str, Any], part: str) -> dict[str, Any]:
    value = schema.get(f"{part}_schema") or schema.get(part) or {}
    if isinstance(value, list):  # field names only
        return {"type": "object", "properties": {name: {"type": "string"} for name in value}}
    return dict(value)


@router.get("/namespace/{namespace}/graphs/", response_model=m.GraphTemplatesResponse, tags=["graph"])
def list_graphs(namespace: Namespace, ctx: Ctx) -> dict[str, Any]:
    """The latest version of every graph template of the namespace (secret values never included)."""
    templates = [
        {
            "name": g["name"],
            "namespace": namespace,
            "nodes": g["template"].get("nodes", []),
            "retry_policy": g["template"].get("retry_policy"),
            "store_config": g["template"].get("store_config"),
            "triggers": g["template"].get("triggers", []),
            "secrets": {name: True for name in g["template"].get("secret_names", [])},
            "validation_status": "VALID",
            "validation_errors": [],
            "version": g["version"],
            "created_at": iso(g["created_at"]),
            "updated_at": iso(g["updated_at"]),
        }
        for g in ctx.queries.graphs_in(namespace)
    ]
    return {"namespace": namespace, "count": len(templates), "templates": templates}


# -- ours ---------------------------------------------------------------------------
@router.get("/namespace/{namespace}/run/{run_id}", response_model=m.RunResponse, tags=["runs"])
def get_run(namespace: Namespace, run_id: str, ctx: Ctx) -> dict[str, Any]:
    """A run: status, its states counted by status, times."""
    ctx.run_in(namespace, run_id)
    return ctx.manager(namespace).get_run_sync(run_id)


@router.get("/namespace/{namespace}/run/{run_id}/states", response_model=m.StatesResponse, tags=["runs"])
def list_states(
    namespace: Namespace,
    run_id: str,
    ctx: Ctx,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    size: Annotated[int, Query(ge=1, le=1000)] = 100,
    identifier: Annotated[str | None, Query(max_length=128)] = None,
    status: StateStatus | None = None,
) -> dict[str, Any]:
    """One page of a run's states (oldest first), optionally of one node and one status; secrets masked."""
    ctx.run_in(namespace, run_id)
    total, found = ctx.queries.states_page(run_id, identifier, [status.value] if status else None, page, size)
    return {"run_id": run_id, "total": total, "page": page, "size": size, "states": [ctx.state_view(s) for s in found]}


@router.get("/namespace/{namespace}/run/{run_id}/wait", response_model=m.RunResponse, tags=["runs"])
async def wait_run(
    namespace: Namespace, run_id: str, ctx: Ctx, timeout: Annotated[float, Query(ge=0, le=60)] = 30.0
) -> dict[str, Any]:
    """Long-poll: answers as soon as the run is SUCCESS, FAILED or CANCELLED, or after `timeout` seconds with
    its current status (`"terminal": false`); call again to keep waiting."""
    await asyncio.to_thread(ctx.run_in, namespace, run_id)
    manager = ctx.manager(namespace)
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        run = await asyncio.to_thread(manager.get_run_sync, run_id)
        terminal = RunStatus(run["status"]) in TERMINAL_RUNS
        if terminal or time.monotonic() >= deadline:
            return {**run, "terminal": terminal}
        await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, 0.25)


@router.post("/namespace/{namespace}/run/{run_id}/cancel", response_model=m.RunResponse, tags=["runs"])
def cancel_run(namespace: Namespace, run_id: str, ctx: Ctx) -> dict[str, Any]:
    """Cancel a run: waiting states become CANCELLED, running ones finish without children."""
    ctx.run_in(namespace, run_id)
    return ctx.manager(namespace).cancel_sync(run_id)


@router.get("/namespace/{namespace}/run/{run_id}/nodes", tags=["runs"])
def run_nodes(namespace: Namespace, run_id: str, ctx: Ctx) -> dict[str, Any]:
    """Per template node of a run: its states counted by status (one GROUP BY), what waits and until when."""
    run = ctx.run_in(namespace, run_id)
    return {
        "run_id": run_id,
        "status": run["status"],
        "nodes": {
            ident: {
                **entry,
                "next_due": iso(entry["next_due"]),
                "first_created": iso(entry["first_created"]),
                "last_updated": iso(entry["last_updated"]),
            }
            for ident, entry in ctx.queries.node_summary(run_id).items()
        },
    }
