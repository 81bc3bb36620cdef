"""The dashboard's pages at `/`: namespaces, graphs and nodes, runs, a run as a live DAG, a state's detail.

Pages are rendered on the server; `static/app.js` refreshes the live part of a run's page and sends
the actions (retry, cancel, trigger) to the JSON API with the CSRF header.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..celery_app import task_name
from ..errors import NotFoundError
from ..status import RunStatus, StateStatus
from ..validate import name_problem
from . import pages as p
from .auth import CSRF_COOKIE, SESSION_COOKIE, Principal, digest, new_csrf_token
from .context import Context
from .dag import render_svg

router = APIRouter(include_in_schema=False)
e, q = p.e, p.q
PROBLEMS = [StateStatus.ERRORED.value, StateStatus.NEXT_CREATED_ERROR.value]


class LoginRequired(Exception):  # internal control flow: the app's handler turns it into a redirect to /login
    """A page was asked for without a valid session while keys are on."""


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def _who(request: Request) -> Principal:
    ring = _ctx(request).ring
    if not ring.enabled:
        return Principal()
    found = ring.find(session=request.cookies.get(SESSION_COOKIE))
    if found is None:
        raise LoginRequired()
    return Principal(found.namespaces, authenticated=True)


def _ns(request: Request, namespace: str) -> str:
    if not _who(request).allows(namespace):
        raise HTTPException(403, "this API key may not use that namespace")
    if name_problem("namespace", namespace) is not None:
        raise NotFoundError(f"namespace {namespace[:80]!r} does not exist")
    return namespace


def _page(
    request: Request, title: str, body: str, crumbs: list[tuple[str, str]] | None = None, token: str = ""
) -> HTMLResponse:
    token = token or request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    user = '<a href="/logout">log out</a>' if _ctx(request).ring.enabled else "auth off (loopback only)"
    response = HTMLResponse(p.layout(title, body, token, [("namespaces", "/"), *(crumbs or [])], user))
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, samesite="strict", httponly=False, path="/")
    response.headers["Cache-Control"] = "no-store"
    return response


# -- login ---------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, failed: int = 0) -> HTMLResponse:
    note = '<p class="err">That key was not accepted.</p>' if failed else ""
    token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    body = (
        f"{note}<form method=post action=/login class=login><label>API key "
        "<input type=password name=key autocomplete=current-password required></label>"
        f'<input type=hidden name=csrf value="{e(token)}">'
        "<button>Log in</button></form><p>The key is one of <code>EXO_API_KEY</code>'s; the browser keeps only "
        "its SHA-256 digest in an HttpOnly cookie.</p>"
    )
    return _page(request, "Log in", body, token=token)


@router.post("/login")
def login(request: Request, key: str = Form(""), csrf: str = Form("")) -> Response:
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or csrf != cookie:
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
    found = _ctx(request).ring.find(key=key)
    if found is None:
        return RedirectResponse("/login?failed=1", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, digest(key), httponly=True, samesite="strict", path="/")
    return response


@router.get("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- namespaces, graphs, nodes ------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    ctx = _ctx(request)
    names = _who(request).visible(ctx.queries.namespaces())
    parts = []
    for ns in names:
        graphs = ctx.queries.graphs_in(ns)
        nodes = ctx.queries.nodes_in(ns)
        runtimes = ctx.queries.runtimes(ns)
        graph_rows = [
            [
                f'<a href="/ui/{q(ns)}/graph/{q(g["name"])}">{e(g["name"])}</a>',
                e(g["version"]),
                e(len(g["template"].get("nodes", []))),
                e(p.when(g["updated_at"])),
                f'<a href="/ui/{q(ns)}/runs?graph={q(g["name"])}">runs</a>',
            ]
            for g in graphs
        ]
        node_rows = [
            [
                f"<code>{e(n['node_name'])}</code>",
                e(", ".join(n["schema"].get("inputs", []))),
                e(", ".join(n["schema"].get("outputs", []))),
                _served_by(n, runtimes),
                e(p.when(n["updated_at"])),
            ]
            for n in nodes
        ]
        parts.append(
            f'<section class="ns"><h2>{e(ns)} <a class="small" href="/ui/{q(ns)}/runs">runs »</a></h2>'
            "<h3>Graphs</h3>"
            + p.table(["graph", "version", "nodes", "updated", ""], graph_rows, "no graphs")
            + "<h3>Registered nodes</h3>"
            + p.table(["node", "inputs", "outputs", "served by", "registered"], node_rows, "no nodes registered")
            + "</section>"
        )
    body = "".join(parts) or '<p class="empty">No namespaces yet: start a worker and upsert a graph.</p>'
    return _page(request, "Namespaces", body)


def _served_by(node: dict[str, Any], runtimes: list[dict[str, Any]]) -> str:
    """The live runtimes (exo_runtimes) that serve a node, or that none does and who registered it."""
    live = [r for r in runtimes if r["live"] and node["node_name"] in r["nodes"]]
    if live:
        return "<br>".join(
            f'<span class="runtime live">{e(r["name"])} on {e(r["host"])} (pid {e(r["pid"])}, '
            f"heartbeat {r['heartbeat_age']:.0f} s ago)</span>"
            for r in live
        )
    registered = f" (registered by {e(node['runtime_name'])})" if node["runtime_name"] else ""
    return f'<span class="runtime none">no live runtime</span>{registered}'


@router.get("/ui/{namespace}/graph/{graph_name}", response_class=HTMLResponse)
def graph_page(request: Request, namespace: str, graph_name: str) -> HTMLResponse:
    ns = _ns(request, namespace)
    ctx = _ctx(request)
    view = ctx.manager(ns).get_graph_sync(graph_name)
    root = _root(view)
    registry = ctx.repo.registry({(root.get("namespace") or ns, root.get("node_name", ""))}) if root else {}
    known = next(iter(registry.values()))["inputs"] if registry else list((root or {}).get("inputs", {}))
    fields = "".join(
        f'<label>{e(name)} <input name="input" data-key="{e(name)}" '
        f'value="{e((root or {}).get("inputs", {}).get(name, ""))}"></label>'
        for name in known
    )
    store_keys = list(view.get("store_config", {}).get("required_keys", []))
    store_fields = "".join(
        f'<label>store {e(k)} <input name="store" data-key="{e(k)}" required></label>' for k in store_keys
    )
    body = (
        f"<p>version {e(view['version'])} · {len(view['nodes'])} nodes · secrets: "
        f"{e(', '.join(view['secrets']) or 'none')} (values never shown)</p>"
        f'<div class="dagbox">{render_svg(view, {}, "")}</div>'
        f'<h2>Trigger</h2><form id="trigger-form" class="trigger" '
        f'data-url="/v0/namespace/{q(ns)}/graph/{q(graph_name)}/trigger" data-ns="{e(ns)}">'
        f"{fields}{store_fields}<button type=submit>Trigger run</button></form>"
        '<p id="action-result" class="result"></p>'
        f"<h2>Template</h2>{p.pretty({k: view[k] for k in ('nodes', 'retry_policy', 'store_config', 'triggers')})}"
    )
    crumbs = [(ns, f"/ui/{q(ns)}/runs"), (graph_name, "")]
    return _page(request, f"Graph {graph_name}", body, crumbs)


def _root(template: dict[str, Any]) -> dict[str, Any] | None:
    targets = {t for n in template.get("nodes", []) for t in (n.get("next_nodes") or [])}
    for node in template.get("nodes", []):
        if node["identifier"] not in targets and not node.get("unites"):
            return dict(node)
    return None


# -- runs ----------------------------------------------------------------------------
@router.get("/ui/{namespace}/runs", response_class=HTMLResponse)
def runs_page(request: Request, namespace: str, graph: str = "", status: str = "", page: int = 1) -> HTMLResponse:
    ns = _ns(request, namespace)
    ctx = _ctx(request)
    page = max(page, 1)
    status = status if status in {s.value for s in RunStatus} else ""
    size = 20
    total, found = ctx.queries.runs_page([ns], graph or None, status or None, page, size)
    rows = [
        [
            f'<a class="run-link" href="/ui/{q(ns)}/run/{e(r["id"])}">{e(r["id"][:12])}…</a>',
            f'<a href="/ui/{q(ns)}/graph/{q(r["graph_name"])}">{e(r["graph_name"])}</a>',
            p.badge(r["status"]),
            e(p.when(r["created_at"])),
            e(p.took(r["started_at"] or r["created_at"], r["finished_at"])),
            f"{r['success_count']:,} ok · {r['pending_count']:,} pending · {r['errored_count']:,} errored · "
            f"{r['retried_count']:,} retried",
        ]
        for r in found
    ]
    graphs = [g["name"] for g in ctx.queries.graphs_in(ns)]
    graph_options = "".join(
        f'<option value="{e(g)}"{" selected" if g == graph else ""}>{e(g)}</option>' for g in graphs
    )
    status_options = "".join(
        f"<option{' selected' if s.value == status else ''}>{e(s.value)}</option>" for s in RunStatus
    )
    body = (
        '<form class="filters" method=get><label>graph <select name=graph><option value="">all</option>'
        f'{graph_options}</select></label><label>status <select name=status><option value="">all</option>'
        f"{status_options}</select></label><button>Filter</button></form>"
        + p.table(["run", "graph", "status", "created", "duration", "states"], rows, "no runs", "runs")
        + p.pager(f"/ui/{q(ns)}/runs", {"graph": graph, "status": status}, page, size, total)
    )
    return _page(request, f"Runs in {ns}", body, [(ns, "")])


def _run_parts(ctx: Context, ns: str, run_id: str) -> str:
    started = time.perf_counter()
    run = ctx.run_in(ns, run_id)
    row = ctx.repo.load_graph(ns, run["graph_name"], run["graph_version"])
    template = row["template"] if row else {"nodes": []}
    summary = ctx.queries.node_summary(run_id)
    scope_rows = ctx.queries.scopes_of(run_id)
    _, problems = ctx.queries.states_page(run_id, statuses=PROBLEMS, size=50)
    problems = [ctx.state_view(s) for s in problems]
    unserved = set(ctx.queries.unserved_nodes(run_id)) if run["status"] in p.ACTIVE_RUNS else set()
    elapsed = [(time.perf_counter() - started) * 1000]
    return p.run_live(ns, run, template, summary, scope_rows, problems, unserved, elapsed)


@router.get("/ui/{namespace}/run/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, namespace: str, run_id: str) -> HTMLResponse:
    ns = _ns(request, namespace)
    ctx = _ctx(request)
    run = ctx.run_in(ns, run_id)
    live = _run_parts(ctx, ns, run_id)
    body = (
        f'<p>graph <a href="/ui/{q(ns)}/graph/{q(run["graph_name"])}">{e(run["graph_name"])}</a> '
        f"v{e(run['graph_version'])} · run <code>{e(run_id)}</code></p>"
        + p.node_legend()
        + f'<div id="live" data-src="/ui/{q(ns)}/run/{e(run_id)}/live">{live}</div>'
        '<p id="action-result" class="result"></p>'
    )
    return _page(request, f"Run of {run['graph_name']}", body, [(ns, f"/ui/{q(ns)}/runs"), (run_id[:12], "")])


@router.get("/ui/{namespace}/run/{run_id}/live", response_class=HTMLResponse)
def run_live(request: Request, namespace: str, run_id: str) -> HTMLResponse:
    """The refreshing part of a run's page (polled every 0.3 s while the run is active)."""
    ns = _ns(request, namespace)
    response = HTMLResponse(_run_parts(_ctx(request), ns, run_id))
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/ui/{namespace}/run/{run_id}/node/{identifier}", response_class=HTMLResponse)
def node_page(
    request: Request, namespace: str, run_id: str, identifier: str, status: str = "", page: int = 1
) -> HTMLResponse:
    ns = _ns(request, namespace)
    ctx = _ctx(request)
    ctx.run_in(ns, run_id)
    page = max(page, 1)
    status = status if status in {s.value for s in StateStatus} else ""
    total, found = ctx.queries.states_page(run_id, identifier, [status] if status else None, page, 50)
    counts = ctx.queries.node_summary(run_id).get(identifier, {}).get("counts", {})
    filters = " ".join(f'<a href="?status={e(s)}">{e(s)} {n:,}</a>' for s, n in sorted(counts.items()))
    rows = [
        [
            f'<a href="/ui/{q(ns)}/state/{e(s["id"])}">{e(s["id"][:12])}…</a>',
            p.badge(s["status"]),
            e(s["retry_count"]),
            e(p.when(s["created_at"])),
            e(p.took(s.get("started_at"), s["updated_at"])),
        ]
        for s in found
    ]
    body = (
        f'<p>{e(p.count_label(counts))}</p><p class="filters">show: <a href="?">all</a> {filters}</p>'
        + p.table(["state", "status", "retries", "created", "ran"], rows, "no states", "states")
        + p.pager(f"/ui/{q(ns)}/run/{q(run_id)}/node/{q(identifier)}", {"status": status}, page, 50, total)
    )
    crumbs = [(ns, f"/ui/{q(ns)}/runs"), (run_id[:12], f"/ui/{q(ns)}/run/{q(run_id)}"), (identifier, "")]
    return _page(request, f"Node {identifier}", body, crumbs)


@router.get("/ui/{namespace}/state/{state_id}", response_class=HTMLResponse)
def state_page(request: Request, namespace: str, state_id: str) -> HTMLResponse:
    ns = _ns(request, namespace)
    ctx = _ctx(request)
    state = ctx.state_in(ns, state_id)
    view = ctx.state_view(state)
    chain = [ctx.state_view(s) for s in ctx.queries.retry_chain(state)]
    attempts = [
        [
            f'<a class="attempt" href="/ui/{q(ns)}/state/{e(s["id"])}">{e(s["id"][:12])}…</a>'
            + (" (this one)" if s["id"] == state_id else ""),
            e(s["retry_count"]),
            p.badge(s["status"]),
            e(s["due_at"]),
            e(s["started_at"] or "—"),
            e(s["updated_at"]),
            f'<span class="err">{e((s["error"] or "")[:200])}</span>',
        ]
        for s in chain
    ]
    hidden = ctx.hidden_values(state["graph_namespace"], state["graph_name"], state["graph_version"])
    from ..crypto import redact

    store = redact(ctx.queries.store_of(state["run_id"]), hidden)
    writes = [
        [f"<code>{e(w['key'])}</code>", f"<code>{e(w['value'])}</code>", e(w["written_at"])]
        for w in ctx.store_writes_view(state)
    ]
    parents = (
        "".join(
            f'<li>{e(ident)}: <a href="/ui/{q(ns)}/state/{e(sid)}">{e(sid)}</a></li>'
            for ident, sid in view["parents"].items()
        )
        or "<li>none (the root)</li>"
    )
    retry = (
        f'<button class="act" data-action="retry" data-url="/v0/namespace/{q(ns)}/state/{e(state_id)}/manual-retry">'
        "Retry this state</button>"
        if state["status"] in ("ERRORED", "NEXT_CREATED_ERROR", "CANCELLED")
        else ""
    )
    flower = ctx.flower_url
    flower_link = (
        f' · <a class="flower" href="{e(flower_tasks_url(ctx, flower, state))}">its task in Flower</a>'
        if flower
        else ""
    )
    body = (
        f"<p>{p.badge(view['status'])} node <code>{e(view['node_name'])}</code> · retry {e(view['retry_count'])} · "
        f"attempts (deliveries) {e(view['attempts'])}{flower_link} {retry}</p>"
        '<p id="action-result" class="result"></p>'
        + (f'<h2>Error</h2><pre class="err">{e(view["error"])}</pre>' if view["error"] else "")
        + f"<h2>Timings</h2><p>created {e(view['created_at'])} · due {e(view['due_at'])} · started "
        f"{e(view['started_at'] or '—')} · updated {e(view['updated_at'])}</p>"
        + f"<h2>Inputs</h2>{p.pretty(view['inputs'])}<h2>Outputs</h2>{p.pretty(view['outputs'])}"
        + (f"<h2>Signal data</h2>{p.pretty(view['data'])}" if view["data"] else "")
        + f"<h2>Parents</h2><ul>{parents}</ul>"
        + "<h2>Attempts</h2>"
        + p.table(["state", "retry", "status", "due", "started", "updated", "error"], attempts, "", "attempts")
        + "<h2>Store writes</h2>"
        + p.table(["key", "value", "written"], writes, "this state wrote no store key", "store-writes")
        + f"<h2>Run store</h2>{p.pretty(store)}"
    )
    crumbs = [
        (ns, f"/ui/{q(ns)}/runs"),
        (state["run_id"][:12], f"/ui/{q(ns)}/run/{quote(state['run_id'])}"),
        (view["identifier"], ""),
    ]
    return _page(request, f"State {view['identifier']}", body, crumbs)


def flower_tasks_url(ctx: Context, flower: str, state: dict[str, Any]) -> str:
    """Flower's tasks page showing this state's tasks (one per delivery).

    Flower 2's `/tasks` page starts its search from its `name` (and `state`, `worker`) parameters as
    `name:<value>`; the value goes in unparsed, so `<task name> args:<state id>` filters to the tasks of
    this node whose arguments carry this state's id (our tasks' args are the ids, never values).
    """
    task = task_name(ctx.settings, state["namespace"], state["node_name"])
    search = quote(f"{task} args:{state['id']}", safe="")
    return f"{flower.rstrip('/')}/tasks?name={search}"
