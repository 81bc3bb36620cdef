"""The shape of a graph template: root, order, lineage, and the barrier of every join and unite.

A *barrier* is a node that waits: a node with `unites` (once per execution of
the united node) or a node with several predecessors and no `unites` (an
implicit join, once per output of the nearest common ancestor of its
predecessors). Its *region* is every node on a path from the awaited node to
the barrier; states of region nodes are counted in the barrier's scope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import GraphNodeModel

JOIN = "JOIN"


@dataclass(frozen=True)
class Barrier:
    """One waiting node: what it waits on, how, and which nodes it counts."""

    node: str
    over: str
    strategy: str  # ALL_SUCCESS, ALL_DONE or JOIN
    region: frozenset[str]

    @property
    def per_output(self) -> bool:
        """Joins run once per output of `over`; unites once per execution of it."""
        return self.strategy == JOIN


@dataclass
class Topology:
    """Everything the validator and the planner need to know about a template's shape."""

    nodes: dict[str, GraphNodeModel]
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    root: str
    order: list[str]
    ancestors: dict[str, frozenset[str]]
    barriers: dict[str, Barrier] = field(default_factory=dict)
    barrier_order: list[str] = field(default_factory=list)
    lineage: dict[str, frozenset[str]] = field(default_factory=dict)
    gathers: dict[str, frozenset[str]] = field(default_factory=dict)

    def direct_children(self, identifier: str) -> list[str]:
        """Successors created directly when `identifier` succeeds (barriers fire on their own)."""
        return [c for c in self.successors[identifier] if c not in self.barriers]

    def member_of(self, identifier: str) -> list[Barrier]:
        """Barriers whose region holds `identifier`, inner ones first."""
        return [self.barriers[b] for b in self.barrier_order if identifier in self.barriers[b].region]

    def opened_by(self, identifier: str) -> list[Barrier]:
        """Barriers that wait on `identifier`, inner ones first."""
        return [self.barriers[b] for b in self.barrier_order if self.barriers[b].over == identifier]

    def readable(self, identifier: str) -> frozenset[str]:
        """Identifiers whose outputs a placeholder in `identifier` may name."""
        return self.lineage[identifier] | self.gathers[identifier]


def _descendants(start: str, successors: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(successors[start])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(successors[n])
    return seen


def analyse(nodes: list[GraphNodeModel]) -> tuple[Topology | None, list[str]]:
    """The template's topology, or None with every structural problem found."""
    errors: list[str] = []
    by_id: dict[str, GraphNodeModel] = {}
    for n in nodes:
        if n.identifier not in by_id:
            by_id[n.identifier] = n
        elif f"duplicate identifier {n.identifier!r}" not in errors:
            errors.append(f"duplicate identifier {n.identifier!r}")
    successors: dict[str, list[str]] = {i: [] for i in by_id}
    predecessors: dict[str, list[str]] = {i: [] for i in by_id}
    # Every entry is checked, duplicates included, so no problem hides behind a duplicate.
    for n in nodes:
        for nxt in dict.fromkeys(n.next_nodes or []):
            if nxt not in by_id:
                errors.append(f"node {n.identifier!r}: next_nodes names unknown node {nxt!r}")
            elif nxt == n.identifier:
                errors.append(f"node {n.identifier!r}: next_nodes names itself (cycle)")
            elif nxt not in successors[n.identifier]:
                successors[n.identifier].append(nxt)
                predecessors[nxt].append(n.identifier)
        if n.unites is not None and n.unites.identifier not in by_id:
            errors.append(f"node {n.identifier!r}: unites names unknown node {n.unites.identifier!r}")
    roots = [i for i, n in by_id.items() if not predecessors[i] and n.unites is None]
    if len(roots) != 1:
        errors.append(
            f"a graph needs exactly one root (a node with no incoming edge and no unites), found "
            f"{len(roots)}: {sorted(roots)}"
        )

    # Kahn's algorithm: a cycle leaves nodes unordered. A unite with no incoming
    # edge is ordered after the node it unites.
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
        stuck = {i for i in by_id if indegree[i] > 0}
        # Nodes merely downstream of a cycle are stuck too; peel them off to name the cycle itself.
        peeled = True
        while peeled:
            peeled = False
            for i in sorted(stuck):
                if not any(t in stuck for t in after[i]):
                    stuck.discard(i)
                    peeled = True
        errors.append(f"cycle in next_nodes (or unites) through {sorted(stuck)}")
    if errors:
        return None, errors

    ancestors: dict[str, frozenset[str]] = {}
    for node in order:
        acc: set[str] = set()
        for p in predecessors[node]:
            acc |= ancestors[p] | {p}
        ancestors[node] = frozenset(acc)
    descendants = {i: frozenset(_descendants(i, successors)) for i in by_id}

    topo = Topology(by_id, successors, predecessors, roots[0], order, ancestors)
    for node in order:
        spec = by_id[node]
        if spec.unites is not None:
            over = spec.unites.identifier
            if predecessors[node]:
                if over not in ancestors[node]:
                    errors.append(f"node {node!r}: unites {over!r}, which is not an ancestor of {node!r}")
                    continue
                region = (descendants[over] & ancestors[node]) - {node}
                for p in predecessors[node]:
                    if p != over and p not in region:
                        errors.append(f"node {node!r}: predecessor {p!r} is not downstream of the united node {over!r}")
            else:
                region = descendants[over] - {node} - descendants[node]
            topo.barriers[node] = Barrier(node, over, spec.unites.strategy.value, frozenset(region))
        elif len(predecessors[node]) > 1:
            common = frozenset.intersection(*(ancestors[p] | {p} for p in predecessors[node]))
            nearest = [c for c in common if not (descendants[c] & common)]
            if len(nearest) != 1:
                errors.append(
                    f"node {node!r}: its predecessors {predecessors[node]} have no single nearest "
                    f"common ancestor to join under (candidates {sorted(nearest)}); use unites"
                )
                continue
            over = nearest[0]
            region = (descendants[over] & ancestors[node]) - {node}
            topo.barriers[node] = Barrier(node, over, JOIN, frozenset(region))
    if errors:
        return None, errors

    # Inner barriers before the barriers whose region holds them.
    pending = [b for b in order if b in topo.barriers]
    while pending:
        for b in pending:
            if not any(b != o and o in topo.barriers[b].region for o in pending):
                topo.barrier_order.append(b)
                pending.remove(b)
                break
        else:  # pragma: no cover - regions of a DAG always nest
            topo.barrier_order.extend(pending)
            break

    for node in order:
        barrier = topo.barriers.get(node)
        if barrier is None:
            preds = predecessors[node]
            topo.lineage[node] = topo.lineage[preds[0]] | {preds[0]} if preds else frozenset()
            topo.gathers[node] = frozenset()
        elif barrier.strategy == JOIN:
            topo.lineage[node] = topo.lineage[barrier.over] | {barrier.over} | barrier.region
            topo.gathers[node] = frozenset()
        else:
            topo.lineage[node] = topo.lineage[barrier.over]
            topo.gathers[node] = barrier.region | {barrier.over}
    return topo, []
