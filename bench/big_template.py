"""Validation and compile cost of large templates (issue 13, item 6): `python -m bench.big_template [N]`.

Three shapes of N nodes (default 10,000): a chain whose every node reads its predecessor and the
root, a star (root -> N-2 nodes -> a join), and a chain of diamonds (fork, two nodes, join). Prints
the CPU seconds to validate and to compile (what a worker does on first sight of a graph version), and
the memory each holds at its peak (tracemalloc, in a second pass so the times are not slowed).
Targets: validate <= 2 s, a worker process <= 50 MB.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from exo_celery.engine import CompiledGraph
from exo_celery.graph import GraphNodeModel, GraphTemplate, StoreConfigModel
from exo_celery.validate import validate_template

ECHO = {"required_inputs": ["text"], "inputs": ["text"], "required_secrets": [], "outputs": ["text"]}
REGISTRY = {("ns", "Echo"): ECHO}


def _node(i: int, nxt: list[str] | None, text: str) -> GraphNodeModel:
    return GraphNodeModel(node_name="Echo", namespace="ns", identifier=f"n{i}", inputs={"text": text}, next_nodes=nxt)


def chain(n: int) -> list[GraphNodeModel]:
    reads = [f"${{{{ n{i - 1}.outputs.text }}}}${{{{ n0.outputs.text }}}}" if i else "x" for i in range(n)]
    return [_node(i, [f"n{i + 1}"] if i < n - 1 else None, reads[i]) for i in range(n)]


def star(n: int) -> list[GraphNodeModel]:
    middle = [_node(i, [f"n{n - 1}"], "${{ n0.outputs.text }}") for i in range(1, n - 1)]
    return [_node(0, [f"n{i}" for i in range(1, n - 1)], "x"), *middle, _node(n - 1, None, "${{ n1.outputs.text }}")]


def diamonds(n: int) -> list[GraphNodeModel]:
    nodes: list[GraphNodeModel] = []
    for d in range(n // 3):
        a = 3 * d
        nodes += [
            _node(a, [f"n{a + 1}", f"n{a + 2}"], "${{ n0.outputs.text }}" if a else "x"),
            _node(a + 1, [f"n{a + 3}"], "x"),
            _node(a + 2, [f"n{a + 3}"], "x"),
        ]
    nodes.append(_node(3 * (n // 3), None, "${{ n1.outputs.text }}"))
    return nodes


def measure(work: Callable[[], Any]) -> tuple[float, float]:
    """(CPU seconds, peak MB) of `work`, the time from an untraced run (CPU time: a loaded machine
    stretches wall time, not this)."""
    started = time.process_time()
    work()
    seconds = time.process_time() - started
    tracemalloc.start()
    work()
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak


def main(n: int) -> None:
    print(f"{'shape':<9} {'nodes':>6} {'validate s':>10} {'peak MB':>8} {'compile s':>9} {'peak MB':>8}")
    for shape in (chain, star, diamonds):
        nodes = shape(n)
        report = validate_template(nodes, {}, StoreConfigModel(), [], REGISTRY)
        assert report.ok, report.errors[:3]
        row = {"template": GraphTemplate(name="g", namespace="ns", nodes=nodes).model_dump(mode="json")}
        row.update(version=1, secrets_cipher="")
        v_s, v_mb = measure(lambda: validate_template(nodes, {}, StoreConfigModel(), [], REGISTRY))  # noqa: B023
        c_s, c_mb = measure(lambda: CompiledGraph.from_row(row))  # noqa: B023
        print(f"{shape.__name__:<9} {len(nodes):>6} {v_s:>10.2f} {v_mb:>8.1f} {c_s:>9.2f} {c_mb:>8.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
