"""HTML building blocks of the dashboard: the layout, tables, badges and the parts of a run's page.

Plain f-strings with `html.escape` on every value from the ledger; no template engine needed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from .dag import count_label, render_svg, status_class

ACTIVE_RUNS = {"PENDING", "RUNNING"}


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def q(value: str) -> str:
    return quote(value, safe="")


def when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def took(start: float | None, end: float | None) -> str:
    if start is None:
        return "—"
    seconds = (end if end is not None else time.time()) - start
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def badge(status: str) -> str:
    return f'<span class="badge b-{e(status).lower()}">{e(status)}</span>'


def layout(title: str, body: str, csrf: str, crumbs: list[tuple[str, str]] | None = None, user: str = "") -> str:
    """The page around `body`: header, breadcrumbs, our CSS and script (served from the wheel)."""
    trail = " / ".join(f'<a href="{e(href)}">{e(label)}</a>' if href else e(label) for label, href in crumbs or [])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="exo-csrf" content="{e(csrf)}"><title>{e(title)} · exo_celery</title>'
        '<link rel="stylesheet" href="/static/style.css"><script defer src="/static/app.js"></script></head>'
        f'<body><header><a class="brand" href="/">exo_celery</a><nav>{trail}</nav>'
        f'<span class="user">{user}</span></header><main><h1>{e(title)}</h1>{body}</main>'
        '<footer><a href="/docs">API (OpenAPI)</a> · <a href="/metrics">metrics</a></footer></body></html>'
    )


def table(headers: list[str], rows: list[list[str]], empty: str = "nothing yet", cls: str = "") -> str:
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pager(base: str, params: dict[str, Any], page: int, size: int, total: int) -> str:
    pages = max((total + size - 1) // size, 1)
    links = []
    for label, target in (("« newer", page - 1), ("older »", page + 1)):
        if 1 <= target <= pages:
            query = urlencode({**{k: v for k, v in params.items() if v}, "page": target})
            links.append(f'<a class="page-link" href="{e(base)}?{e(query)}">{label}</a>')
    return f'<p class="pager">page {page} of {pages} ({total:,} in all) {" ".join(links)}</p>'


def waits(
    template: dict[str, Any],
    summary: dict[str, dict[str, Any]],
    scope_rows: list[dict[str, Any]],
    unserved: set[tuple[str, str]],
    now: float,
    ns: str = "",
) -> list[str]:
    """Why something waits: due at T, waiting for a runtime for node X, waiting on N branches.

    `unserved`: the (namespace, node) pairs with waiting states that no live runtime serves
    (`Runtimes.waiting_nodes`, the same rule beat's sweep uses)."""
    reasons = []
    names = {n["identifier"]: n.get("node_name", "") for n in template.get("nodes", [])}
    spaces = {n["identifier"]: n.get("namespace") or ns for n in template.get("nodes", [])}
    for ident, entry in summary.items():
        if entry["not_due"] and entry["next_due"]:
            reasons.append(
                f"<b>{e(ident)}</b>: {entry['not_due']:,} state(s) due at {e(when(entry['next_due']))} "
                f"(in {max(entry['next_due'] - now, 0):.1f} s: a retry or delay)"
            )
        if entry["created_ready"]:
            reasons.append(f"<b>{e(ident)}</b>: {entry['created_ready']:,} due, waiting for beat to release them")
        queued = entry["queued_ready"]
        if queued > 0:
            node = names.get(ident, "")
            if node and (spaces.get(ident, ns), node) in unserved:
                reasons.append(
                    f"<b>{e(ident)}</b>: {queued:,} queued, waiting for a runtime for node "
                    f"<code>{e(node)}</code> (no live runtime serves it)"
                )
            else:
                reasons.append(
                    f"<b>{e(ident)}</b>: {queued:,} queued, waiting for a free worker of <code>{e(node)}</code>"
                )
        if entry["running"]:
            reasons.append(f"<b>{e(ident)}</b>: {entry['running']:,} executing now")
    for scope in scope_rows:
        if scope["outstanding"] > 0:
            extra = "".join(
                f", {scope[k]:,} {label}" for k, label in (("failed", "failed"), ("pruned", "pruned")) if scope[k]
            )
            reasons.append(f"<b>{e(scope['barrier'])}</b>: waiting on {scope['outstanding']:,} open branch(es){extra}")
    return reasons


def unite_progress(template: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[str]:
    """For each uniting node: how many states of the united node's branches are done."""
    lines = []
    for node in template.get("nodes", []):
        unites = node.get("unites")
        if not unites:
            continue
        over = unites["identifier"]
        counts = summary.get(over, {}).get("counts", {})
        branches = sum(v for k, v in counts.items() if k != "RETRY_CREATED")
        done = sum(v for k, v in counts.items() if k not in ("CREATED", "QUEUED", "EXECUTED", "RETRY_CREATED"))
        fired = sum(summary.get(node["identifier"], {}).get("counts", {}).values())
        pct = 100.0 * done / branches if branches else 0.0
        lines.append(
            f'<div class="unite"><b>{e(node["identifier"])}</b> unites <b>{e(over)}</b> '
            f"({e(unites.get('strategy', 'ALL_SUCCESS'))}): {done:,} / {branches:,} branches done"
            f'<div class="bar"><span style="width:{pct:.1f}%"></span></div>'
            f"{'fired' if fired else 'not fired yet'}</div>"
        )
    return lines


def run_live(
    ns: str,
    run: dict[str, Any],
    template: dict[str, Any],
    summary: dict[str, dict[str, Any]],
    scope_rows: list[dict[str, Any]],
    problems: list[dict[str, Any]],
    unserved: set[tuple[str, str]],
    render_ms: list[float],
) -> str:
    """The part of a run's page that refreshes while the run is active."""
    active = run["status"] in ACTIVE_RUNS
    now = time.time()
    counts: dict[str, int] = {}
    for entry in summary.values():
        for k, v in entry["counts"].items():
            counts[k] = counts.get(k, 0) + v
    totals = ", ".join(f"{v:,} {e(k)}" for k, v in sorted(counts.items())) or "no states"
    base = f"/ui/{q(ns)}/run/{q(run['id'])}/node/"
    svg = render_svg(template, summary, base)
    reasons = waits(template, summary, scope_rows, unserved, now, ns) if active else []
    rows = [
        [
            f'<a href="/ui/{q(ns)}/state/{e(s["id"])}">{e(s["id"][:12])}…</a>',
            e(s["identifier"]),
            badge(s["status"]),
            f'<span class="err">{e((s.get("error") or "")[:160])}</span>',
            e(s["retry_count"]),
            f'<button class="act" data-action="retry" data-state="{e(s["id"])}" '
            f'data-url="/v0/namespace/{q(ns)}/state/{e(s["id"])}/manual-retry">Retry</button>'
            if s["status"] in ("ERRORED", "NEXT_CREATED_ERROR")
            else "",
        ]
        for s in problems
    ]
    cancel = (
        f'<button class="act danger" data-action="cancel" data-url="/v0/namespace/{q(ns)}/run/{e(run["id"])}/cancel">'
        "Cancel run</button>"
        if active
        else ""
    )
    return (
        f'<div id="live-state" data-active="{1 if active else 0}">'
        f'<p class="summary">{cancel} {badge(run["status"])} started {e(when(run["started_at"]))}, '
        f"{'running for' if active else 'took'} {e(took(run['started_at'] or run['created_at'], run['finished_at']))}"
        f" · {totals}</p>"
        f'<div class="dagbox">{svg}</div>'
        + ("<h2>Waiting</h2><ul class=waits>" + "".join(f"<li>{r}</li>" for r in reasons) + "</ul>" if reasons else "")
        + ("<h2>Unites</h2>" + "".join(unite_progress(template, summary)) if unite_progress(template, summary) else "")
        + "<h2>Failed states</h2>"
        + table(["state", "node", "status", "error", "retries", ""], rows, "no failed states", "states")
        + f'<p class="timing">rendered in {render_ms[0]:.0f} ms</p></div>'
    )


def node_legend() -> str:
    items = ["success", "running", "waiting", "errored", "cancelled", "idle"]
    return '<p class="legend">' + "".join(f'<span class="lg s-{i}">{i}</span>' for i in items) + "</p>"


def pretty(value: Any) -> str:
    return f"<pre>{e(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


__all__ = ["count_label", "status_class"]
