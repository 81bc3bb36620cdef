"""A graph template drawn as an inline SVG DAG (layered layout), each node labelled with its states' counts.

Pure: a template and per-node counts in, SVG text out. One box per template node however wide
its fan-out: "4,812 / 5,000 SUCCESS, 3 ERRORED".
"""

from __future__ import annotations

from html import escape
from typing import Any

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 230, 70, 40, 60, 20
_ORDER = ("SUCCESS", "ERRORED", "NEXT_CREATED_ERROR", "PRUNED", "CANCELLED", "QUEUED", "CREATED", "EXECUTED")


def edges_of(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, kind) for every `next_nodes` edge ("next") and every `unites` link ("unites")."""
    known = {n["identifier"] for n in template.get("nodes", [])}
    found: list[tuple[str, str, str]] = []
    for node in template.get("nodes", []):
        for target in node.get("next_nodes") or []:
            if target in known:
                found.append((node["identifier"], target, "next"))
        unites = node.get("unites")
        if unites and unites.get("identifier") in known:
            found.append((unites["identifier"], node["identifier"], "unites"))
    return found


def layers(template: dict[str, Any]) -> dict[str, int]:
    """Each node's layer: the longest path from a source (every edge kind counts)."""
    ids = [n["identifier"] for n in template.get("nodes", [])]
    incoming: dict[str, list[str]] = {i: [] for i in ids}
    following: dict[str, list[str]] = {i: [] for i in ids}
    for source, target, kind in edges_of(template):
        incoming[target].append(source)
        if kind == "next":
            following[source].append(target)
    # A uniting node runs after the whole region it unites: draw it below every node of that region.
    for source, target, kind in edges_of(template):
        if kind == "unites":
            after_target = _reachable(following, target)
            incoming[target].extend(n for n in _reachable(following, source) if n not in after_target)
    layer: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str]) -> int:
        if node in layer:
            return layer[node]
        parents = [p for p in incoming[node] if p not in seen]  # a stored template has no cycle; be safe
        layer[node] = 0 if not parents else 1 + max(depth(p, seen | {node}) for p in parents)
        return layer[node]

    for node in ids:
        depth(node, frozenset())
    return layer


def _reachable(following: dict[str, list[str]], start: str) -> set[str]:
    """Nodes reachable from `start` by `next_nodes` edges, `start` included."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in following[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def status_class(counts: dict[str, int]) -> str:
    """The colour of a node: errored beats running beats done; nothing yet is idle."""
    if not counts:
        return "idle"
    if counts.get("ERRORED") or counts.get("NEXT_CREATED_ERROR"):
        return "errored"
    if counts.get("QUEUED") or counts.get("EXECUTED"):
        return "running"
    if counts.get("CREATED"):
        return "waiting"
    if counts.get("CANCELLED") and not counts.get("SUCCESS"):
        return "cancelled"
    return "success"


def count_label(counts: dict[str, int]) -> str:
    """ "4,812 / 5,000 SUCCESS, 3 ERRORED" (retried attempts are not counted as branches)."""
    live = {k: v for k, v in counts.items() if k != "RETRY_CREATED" and v}
    total = sum(live.values())
    if not total:
        return "not started"
    parts = []
    ordered = sorted(live, key=lambda s: _ORDER.index(s) if s in _ORDER else 99)
    for i, status in enumerate(ordered):
        parts.append(f"{live[status]:,} / {total:,} {status}" if i == 0 else f"{live[status]:,} {status}")
    if counts.get("RETRY_CREATED"):
        parts.append(f"{counts['RETRY_CREATED']:,} retried")
    return ", ".join(parts)


def render_svg(template: dict[str, Any], summary: dict[str, dict[str, Any]], node_href: str = "") -> str:
    """The DAG as `<svg>`: boxes by layer, arrows between them; `node_href` + identifier links each box."""
    nodes = template.get("nodes", [])
    layer = layers(template)
    rows: dict[int, list[dict[str, Any]]] = {}
    for node in nodes:
        rows.setdefault(layer.get(node["identifier"], 0), []).append(node)
    widest = max((len(r) for r in rows.values()), default=1)
    width = PAD * 2 + widest * BOX_W + (widest - 1) * GAP_X
    height = PAD * 2 + len(rows) * BOX_H + max(len(rows) - 1, 0) * GAP_Y
    pos: dict[str, tuple[float, float]] = {}
    for depth, row in sorted(rows.items()):
        offset = (width - (len(row) * BOX_W + (len(row) - 1) * GAP_X)) / 2
        for i, node in enumerate(row):
            pos[node["identifier"]] = (offset + i * (BOX_W + GAP_X), PAD + depth * (BOX_H + GAP_Y))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="graph of the run">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>',
    ]
    for source, target, kind in edges_of(template):
        (sx, sy), (tx, ty) = pos[source], pos[target]
        x1, y1, x2, y2 = sx + BOX_W / 2, sy + BOX_H, tx + BOX_W / 2, ty
        mid = (y1 + y2) / 2
        out.append(
            f'<path class="edge edge-{kind}" d="M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} '
            f'{x2:.0f},{y2 - 2:.0f}" marker-end="url(#arrow)"/>'
        )
    for node in nodes:
        ident = node["identifier"]
        x, y = pos[ident]
        entry = summary.get(ident, {})
        counts = entry.get("counts", {})
        label = count_label(counts)
        title = escape(f"{ident} ({node.get('node_name', '')}): {label}")
        unites = node.get("unites")
        sub = escape(node.get("node_name", "")) + (f" · unites {escape(unites['identifier'])}" if unites else "")
        out.append(
            f'<a href="{escape(node_href + ident)}" class="node-link"><g class="node s-{status_class(counts)}" '
            f'data-identifier="{escape(ident)}" transform="translate({x:.0f},{y:.0f})"><title>{title}</title>'
            f'<rect width="{BOX_W}" height="{BOX_H}" rx="8"/>'
            f'<text x="12" y="22" class="ident">{escape(ident)}</text>'
            f'<text x="12" y="40" class="sub">{sub}</text>'
            f'<text x="12" y="58" class="counts">{escape(_clip(label, 36))}</text></g></a>'
        )
    out.append("</svg>")
    return "".join(out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
