"""The shape of a graph template: root, order, lineage, and the barrier of every join and unite.

A *barrier* is a node that waits: a node with `unites` (once per execution of
the united node) or a node with several predecessors and no `unites` (an
implicit join, once per output of the nearest common ancestor of its
predecessors). Its *region* is every node on a path from the awaited node to
the barrier; states of region nodes are counted in the barrier's scope.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .graph import GraphNodeModel, UnitesModel, UnitesStrategyEnum
from .outcomes import BarrierStrategy

JOIN: BarrierStrategy = "JOIN"
_UNITE_STRATEGY: dict[UnitesStrategyEnum, BarrierStrategy] = {
    UnitesStrategyEnum.ALL_SUCCESS: "ALL_SUCCESS",
    UnitesStrategyEnum.ALL_DONE: "ALL_DONE",
}


@dataclass(frozen=True)
class Barrier:
    """One waiting node: what it waits on, how, and which nodes it counts."""

    node: str
    over: str
    strategy: BarrierStrategy
    region: frozenset[str]

    @property
    def per_output(self) -> bool:
        """Joins run once per output of `over`; unites once per execution of it."""
        return self.strategy == JOIN


class Lineage(Mapping[str, frozenset[str]]):
    """Each node's lineage, kept as a link to another node's lineage plus what it adds.

    A chain of n nodes costs O(n) memory this way (full sets would cost O(n^2)); a set is
    built only when one is asked for.
    """

    def __init__(self) -> None:
        self.links: dict[str, tuple[str | None, frozenset[str]]] = {}

    def __getitem__(self, identifier: str) -> frozenset[str]:
        acc: set[str] = set()
        link: str | None = identifier
        while link is not None:
            link, extra = self.links[link]
            acc |= extra
        return frozenset(acc)

    def __iter__(self) -> Iterator[str]:
        return iter(self.links)

    def __len__(self) -> int:
        return len(self.links)


@dataclass
class Topology:
    """Everything the validator and the planner need to know about a template's shape."""

    nodes: dict[str, GraphNodeModel]
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    root: str
    order: list[str]
    barriers: dict[str, Barrier] = field(default_factory=dict)
    barrier_order: list[str] = field(default_factory=list)
    lineage: Lineage = field(default_factory=Lineage)
    gathers: dict[str, frozenset[str]] = field(default_factory=dict)
    _members: dict[str, list[Barrier]] = field(default_factory=dict, repr=False)
    _openers: dict[str, list[Barrier]] = field(default_factory=dict, repr=False)

    def direct_children(self, identifier: str) -> list[str]:
        """Successors created directly when `identifier` succeeds (barriers fire on their own)."""
        return [c for c in self.successors[identifier] if c not in self.barriers]

    def member_of(self, identifier: str) -> list[Barrier]:
        """Barriers whose region holds `identifier`, inner ones first."""
        return self._members.get(identifier, [])

    def opened_by(self, identifier: str) -> list[Barrier]:
        """Barriers that wait on `identifier`, inner ones first."""
        return self._openers.get(identifier, [])

    def readable(self, identifier: str) -> frozenset[str]:
        """Identifiers whose outputs a placeholder in `identifier` may name."""
        return self.lineage[identifier] | self.gathers.get(identifier, frozenset())

    def unreadable(self, wanted: dict[str, set[str]]) -> dict[str, set[str]]:
        """For each node of `wanted`, the names it wants that it may not read (one pass, linear).

        Walks the tree of lineage links depth first, keeping a count of the identifiers on
        the current lineage, so no node's full lineage is ever built.
        """
        children: dict[str, list[str]] = {}
        for ident, (base, _) in self.lineage.links.items():
            if base is not None:
                children.setdefault(base, []).append(ident)
        on_path: Counter[str] = Counter()
        result: dict[str, set[str]] = {}
        stack: list[tuple[str, bool]] = [(self.root, True)]
        while stack:
            ident, entering = stack.pop()
            extra = self.lineage.links[ident][1]
            if not entering:
                on_path.subtract(extra)
                continue
            on_path.update(extra)
            gathers = self.gathers.get(ident, frozenset())
            missing = {n for n in wanted.get(ident, ()) if on_path[n] <= 0 and n not in gathers}
            if missing:
                result[ident] = missing
            stack.append((ident, False))
            stack.extend((c, True) for c in children.get(ident, []))
        return result


def _reach(start: str, edges: dict[str, list[str]], keep: Callable[[str], bool] = lambda _: True) -> set[str]:
    """Nodes reachable from `start` along `edges` (not `start` itself), through nodes `keep` accepts."""
    seen: set[str] = set()
    stack = [n for n in edges[start] if keep(n)]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(m for m in edges[n] if keep(m) and m not in seen)
    return seen


def _between(over: str, node: str, topo: Topology, index: dict[str, int]) -> tuple[set[str], set[str]]:
    """(nodes on a path from `over` to `node`, ancestors of `node` after `over` in topological order).

    Both searches stay inside the window of the topological order between the two nodes.
    """
    lo, hi = index[over], index[node]
    down = _reach(over, topo.successors, lambda n: index[n] <= hi)
    up = _reach(node, topo.predecessors, lambda n: index[n] >= lo)
    return (down & up) - {node}, up


def _nearest_common(preds: list[str], topo: Topology, index: dict[str, int]) -> list[str]:
    """Common ancestors (or selves) of `preds` that have no common descendant.

    Walks up from the predecessors in decreasing topological order, marking which
    predecessors reach each node. It stops when one open node is left and every
    predecessor reaches it: every node above is its ancestor, hence not nearest.
    """
    full = (1 << len(preds)) - 1
    mask = {p: 1 << bit for bit, p in enumerate(preds)}
    heap = [(-index[p], p) for p in mask]
    heapq.heapify(heap)
    open_partial = sum(1 for m in mask.values() if m != full)
    nearest: list[str] = []
    while heap and not (open_partial == 0 and len(heap) == 1):
        _, n = heapq.heappop(heap)
        m = mask[n]
        if m != full:
            open_partial -= 1
        elif not any(mask.get(s) == full for s in topo.successors[n]):
            nearest.append(n)
        for p in topo.predecessors[n]:
            before = mask.get(p)
            if before is None:
                heapq.heappush(heap, (-index[p], p))
                mask[p] = m
                open_partial += m != full
            else:
                mask[p] = before | m
                open_partial -= before != full and mask[p] == full
    for _, n in heap:
        if mask[n] == full and not any(mask.get(s) == full for s in topo.successors[n]):
            nearest.append(n)
    return nearest


def _peel_cycle(stuck: set[str], after: dict[str, list[str]]) -> set[str]:
    """The nodes of `stuck` that are on a cycle or lead into one (merely downstream nodes removed)."""
    before: dict[str, list[str]] = {i: [] for i in stuck}
    out = {i: 0 for i in stuck}
    for i in stuck:
        for t in after[i]:
            if t in stuck:
                out[i] += 1
                before[t].append(i)
    queue = [i for i, n in out.items() if n == 0]
    while queue:
        i = queue.pop()
        stuck.discard(i)
        for p in before[i]:
            out[p] -= 1
            if out[p] == 0:
                queue.append(p)
    return stuck


def _listed(names: set[str] | list[str]) -> list[str]:
    """`names` sorted, at most 20 of them shown (and how many more there are)."""
    shown = sorted(names)
    return shown if len(shown) <= 20 else [*shown[:20], f"... {len(shown) - 20} more"]


def _by_identifier(nodes: list[GraphNodeModel], errors: list[str]) -> dict[str, GraphNodeModel]:
    """Each identifier's first node; every identifier used twice is reported once."""
    by_id: dict[str, GraphNodeModel] = {}
    duplicates: set[str] = set()
    for n in nodes:
        if n.identifier not in by_id:
            by_id[n.identifier] = n
        elif n.identifier not in duplicates:
            duplicates.add(n.identifier)
            errors.append(f"duplicate identifier {n.identifier!r}")
    return by_id


def _edges(
    nodes: list[GraphNodeModel], by_id: dict[str, GraphNodeModel], errors: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(successors, predecessors) from `next_nodes`; unknown names, self-loops and unknown unites reported.

    Every entry is checked, duplicates included, so no problem hides behind a duplicate.
    """
    successors: dict[str, list[str]] = {i: [] for i in by_id}
    predecessors: dict[str, list[str]] = {i: [] for i in by_id}
    for n in nodes:
        linked = set(successors[n.identifier])
        for nxt in dict.fromkeys(n.next_nodes or []):
            if nxt not in by_id:
                errors.append(f"node {n.identifier!r}: next_nodes names unknown node {nxt!r}")
            elif nxt == n.identifier:
                errors.append(f"node {n.identifier!r}: next_nodes names itself (cycle)")
            elif nxt not in linked:
                linked.add(nxt)
                successors[n.identifier].append(nxt)
                predecessors[nxt].append(n.identifier)
        if n.unites is not None and n.unites.identifier not in by_id:
            errors.append(f"node {n.identifier!r}: unites names unknown node {n.unites.identifier!r}")
    return successors, predecessors


def _roots(by_id: dict[str, GraphNodeModel], predecessors: dict[str, list[str]], errors: list[str]) -> list[str]:
    """Nodes with no incoming edge and no unites; anything but exactly one is reported."""
    roots = [i for i, n in by_id.items() if not predecessors[i] and n.unites is None]
    if len(roots) != 1:
        errors.append(
            f"a graph needs exactly one root (a node with no incoming edge and no unites), found "
            f"{len(roots)}: {_listed(roots)}"
        )
    return roots


def _order(
    by_id: dict[str, GraphNodeModel],
    successors: dict[str, list[str]],
    predecessors: dict[str, list[str]],
    errors: list[str],
) -> list[str]:
    """A topological order (Kahn's algorithm); a cycle leaves nodes unordered and is reported.

    A unite with no incoming edge is ordered after the node it unites.
    """
    after: dict[str, list[str]] = {i: list(s) for i, s in successors.items()}
    for i, n in by_id.items():
        if n.unites is not None and not predecessors[i] and n.unites.identifier in by_id:
            after[n.unites.identifier].append(i)
    indegree = {i: 0 for i in by_id}
    for targets in after.values():
        for t in targets:
            indegree[t] += 1
    order = [i for i in by_id if indegree[i] == 0]
    for node in order:
        for nxt in after[node]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                order.append(nxt)
    if len(order) != len(by_id):
        # Nodes merely downstream of a cycle are stuck too; peel them off to name the cycle itself.
        stuck = _peel_cycle({i for i in by_id if indegree[i] > 0}, after)
        errors.append(f"cycle in next_nodes (or unites) through {_listed(stuck)}")
    return order


def _unite_barrier(
    node: str, unites: UnitesModel, topo: Topology, index: dict[str, int], errors: list[str]
) -> Barrier | None:
    """The barrier of a node with `unites`, or None (reported) when it unites a node that is not its ancestor."""
    over = unites.identifier
    preds = topo.predecessors[node]
    if preds:
        region, up = _between(over, node, topo, index)
        if over not in up:
            errors.append(f"node {node!r}: unites {over!r}, which is not an ancestor of {node!r}")
            return None
        for p in preds:
            if p != over and p not in region:
                errors.append(f"node {node!r}: predecessor {p!r} is not downstream of the united node {over!r}")
    else:
        region = _reach(over, topo.successors) - {node} - _reach(node, topo.successors)
    return Barrier(node, over, _UNITE_STRATEGY[unites.strategy], frozenset(region))


def _join_barrier(node: str, topo: Topology, index: dict[str, int], errors: list[str]) -> Barrier | None:
    """The implicit join of a node with several predecessors, or None (reported) with no single place to join."""
    preds = topo.predecessors[node]
    nearest = _nearest_common(preds, topo, index)
    if len(nearest) != 1:
        errors.append(
            f"node {node!r}: its predecessors {preds} have no single nearest "
            f"common ancestor to join under (candidates {sorted(nearest)}); use unites"
        )
        return None
    over = nearest[0]
    region, _ = _between(over, node, topo, index)
    return Barrier(node, over, JOIN, frozenset(region))


def _find_barriers(topo: Topology, index: dict[str, int], errors: list[str]) -> None:
    """Every unite and join of `topo`, in topological order, into `topo.barriers`."""
    for node in topo.order:
        unites = topo.nodes[node].unites
        if unites is not None:
            barrier = _unite_barrier(node, unites, topo, index, errors)
        elif len(topo.predecessors[node]) > 1:
            barrier = _join_barrier(node, topo, index, errors)
        else:
            continue
        if barrier is not None:
            topo.barriers[node] = barrier


def _order_barriers(topo: Topology, index: dict[str, int]) -> None:
    """Inner barriers before the barriers whose region holds them, else in topological order; then
    who opens and who belongs to each barrier, inner ones first."""
    inner_of = {b: [o for o in barrier.region if o in topo.barriers] for b, barrier in topo.barriers.items()}
    waiting = {b: len(inner) for b, inner in inner_of.items()}
    outer_of: dict[str, list[str]] = {b: [] for b in topo.barriers}
    for b, inner in inner_of.items():
        for o in inner:
            outer_of[o].append(b)
    ready = [(index[b], b) for b, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    while ready:
        _, b = heapq.heappop(ready)
        topo.barrier_order.append(b)
        for o in outer_of[b]:
            waiting[o] -= 1
            if waiting[o] == 0:
                heapq.heappush(ready, (index[o], o))
    for b in topo.barrier_order:
        barrier = topo.barriers[b]
        topo._openers.setdefault(barrier.over, []).append(barrier)
        for ident in barrier.region:
            topo._members.setdefault(ident, []).append(barrier)


def _link_lineage(topo: Topology) -> None:
    """Each node's lineage link (its first predecessor's, or its barrier's) and each unite's gathered nodes."""
    links = topo.lineage.links
    for node in topo.order:
        waits = topo.barriers.get(node)
        if waits is None:
            preds = topo.predecessors[node]
            links[node] = (preds[0], frozenset((preds[0],))) if preds else (None, frozenset())
        elif waits.strategy == JOIN:
            links[node] = (waits.over, waits.region | {waits.over})
        else:
            links[node] = (waits.over, frozenset())
            topo.gathers[node] = waits.region | {waits.over}


def analyse(nodes: list[GraphNodeModel]) -> tuple[Topology | None, list[str]]:
    """The template's topology, or None with every structural problem found (near-linear in size)."""
    errors: list[str] = []
    by_id = _by_identifier(nodes, errors)
    successors, predecessors = _edges(nodes, by_id, errors)
    roots = _roots(by_id, predecessors, errors)
    order = _order(by_id, successors, predecessors, errors)
    if errors:
        return None, errors
    index = {n: i for i, n in enumerate(order)}
    topo = Topology(by_id, successors, predecessors, roots[0], order)
    _find_barriers(topo, index, errors)
    if errors:
        return None, errors
    _order_barriers(topo, index)
    _link_lineage(topo)
    return topo, []
