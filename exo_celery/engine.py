"""The pure planner: from a state's outcome to the ledger changes it causes. No I/O here.

Fan-in uses counting barriers (Dramatiq's model): every join and unite has a
*scope* per execution (unite) or per output (join) of the node it waits on,
holding how many states of its region are not yet terminal. A state that ends
moves each scope it belongs to by `(new region states it created) - 1`; the
transaction that brings a scope to zero creates the barrier state. That is a
constant number of statements per finished state, whatever the fan-out width.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .crypto import redact
from .errors import PlaceholderError, PlanError
from .graph import GraphTemplate
from .mapping import Ref, parse_refs, render
from .status import StateStatus
from .topology import JOIN, Barrier, Topology, analyse


def new_id() -> str:
    """A fresh state or run id."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Source:
    """The facts of an existing state that its children and barrier states inherit."""

    id: str
    run_id: str
    identifier: str
    parents: dict[str, str]
    scopes: dict[str, str]
    branch: str
    execution_id: str  # the state that executed (differs from `id` for fan-out outputs 1..n)


@dataclass(eq=False, slots=True)
class NewState:
    """A state row to insert."""

    id: str
    identifier: str
    node_name: str
    namespace: str
    inputs: dict[str, str]
    parents: dict[str, str]
    scopes: dict[str, str]
    branch: str
    status: StateStatus = StateStatus.QUEUED
    outputs: dict[str, Any] | None = None
    execution_id: str | None = None
    fingerprint: str | None = None
    retry_of: str | None = None
    retry_count: int = 0


@dataclass
class ScopeOpen:
    """A scope to create when the node a barrier waits on has executed."""

    id: str
    barrier: str
    outstanding: int
    opener_id: str


Shape = tuple[str, tuple[tuple[str, str], ...]]  # a new state's identifier and its scopes, for counting

BUILT_AT_ONCE = 1000  # a plan creating more states than this builds them a chunk at a time, when written


def shape_of(identifier: str, scopes: dict[str, str]) -> Shape:
    """What the counters need of a new state: its identifier and its scopes."""
    return identifier, tuple(scopes.items())


class Planned:
    """The states a plan creates. Up to BUILT_AT_ONCE they are a list; beyond, they are built a chunk at a
    time while the ledger writes them, once (a fan-out of 100,000 is never held whole). Either way the
    counters read their shapes, counted when the plan was made."""

    def __init__(
        self,
        count: int,
        shapes: Counter[Shape],
        build: Callable[[int], Iterator[list[NewState]]] | None,
        built: list[NewState] | None = None,
    ) -> None:
        self.count = count
        self.shapes = shapes
        self._build = build
        self._states = built
        if built is None and count <= BUILT_AT_ONCE and build is not None:
            self._states = [s for chunk in build(BUILT_AT_ONCE) for s in chunk]

    @classmethod
    def of(cls, states: list[NewState]) -> Planned:
        """Planned states already built."""
        return cls(len(states), Counter(shape_of(s.identifier, s.scopes) for s in states), None, states)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[NewState]:
        for chunk in self.chunks(BUILT_AT_ONCE):
            yield from chunk

    def __getitem__(self, index: int) -> NewState:
        assert self._states is not None, "states built while written are read in order, once"
        return self._states[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, Planned)):
            return list(self) == list(other)
        return NotImplemented

    def chunks(self, size: int) -> Iterator[list[NewState]]:
        """The states, `size` at a time; states built while written can be read only once."""
        if self._states is not None:
            states = self._states
            return iter([states[i : i + size] for i in range(0, len(states), size)])
        assert self._build is not None, "states built while written are read once"
        build, self._build = self._build, None
        return build(size)

    def count_where(self, test: Callable[[str, dict[str, str]], bool]) -> int:
        """How many of the states pass `test(identifier, scopes)`."""
        return sum(n for (identifier, scopes), n in self.shapes.items() if test(identifier, dict(scopes)))


@dataclass
class SuccessPlan:
    """Everything a successful execution changes besides its own row."""

    output_states: Planned = field(default_factory=lambda: Planned.of([]))  # fan-out outputs 1..n-1
    children: Planned = field(default_factory=lambda: Planned.of([]))
    opens: list[ScopeOpen] = field(default_factory=list)


def scope_id(barrier: Barrier, source: Source) -> str:
    """The scope of `barrier` opened by `source` (an output of the node it waits on)."""
    key = source.id if barrier.per_output else source.execution_id
    return f"{barrier.node}@{key}"


def inherited_scopes(topo: Topology, identifier: str, source: Source) -> dict[str, str]:
    """The scopes a new state of `identifier` created from `source` belongs to."""
    result: dict[str, str] = {}
    for barrier in topo.member_of(identifier):
        if barrier.over == source.identifier:
            result[barrier.node] = scope_id(barrier, source)
        elif barrier.node in source.scopes:
            result[barrier.node] = source.scopes[barrier.node]
    return result


DEFAULT_MAX_INPUT_BYTES = 8_388_608


@dataclass(frozen=True)
class InputRules:
    """What rendered inputs obey before they reach the ledger: a size cap (EXO_MAX_INPUT_BYTES) and the
    graph's secret values, which are replaced by *** wherever a rendering would write them."""

    max_bytes: int = DEFAULT_MAX_INPUT_BYTES
    hidden: tuple[str, ...] = ()


DEFAULT_RULES = InputRules()


def render_inputs(
    template_inputs: dict[str, Any],
    resolve: Callable[[Ref], str],
    rules: InputRules = DEFAULT_RULES,
    identifier: str = "",
) -> dict[str, str]:
    """A node's template inputs with every placeholder resolved, capped in size and with secrets hidden.

    The size is counted while placeholders resolve, so an oversized rendering stops before it is built.
    """
    limit = rules.max_bytes
    over = f"node {identifier!r}: its rendered inputs are over the limit of {limit} bytes (EXO_MAX_INPUT_BYTES)"
    used = sum(len(k) + len(v) for k, v in template_inputs.items() if isinstance(v, str))

    def counted(ref: Ref) -> str:
        nonlocal used
        value = resolve(ref)
        used += len(value)
        if used > limit:
            raise PlanError(over)
        return value

    try:
        rendered = {name: render(value, counted) for name, value in template_inputs.items()}
    except PlaceholderError as exc:
        raise PlanError(str(exc)) from exc
    chars = sum(len(k) + len(v) for k, v in rendered.items())
    # JSON escaping writes a character in at most 12 bytes: only a rendering that could be over is measured.
    if chars * 12 > limit and (size := len(json.dumps(rendered))) > limit:
        raise PlanError(
            f"node {identifier!r}: its rendered inputs are {size} bytes, over the limit of {limit} "
            "(EXO_MAX_INPUT_BYTES)"
        )
    if rules.hidden:
        rendered = redact(rendered, rules.hidden)
    return rendered


def make_resolver(
    identifier: str,
    parents: dict[str, str],
    outputs_of: dict[str, dict[str, Any]],
    store: dict[str, str],
    gathered: dict[str, list[dict[str, Any]]] | None = None,
) -> Callable[[Ref], str]:
    """A resolver over a lineage (`parents`: identifier -> state id, `outputs_of`: state id -> outputs)."""

    def resolve(ref: Ref) -> str:
        if ref.kind == "store":
            if ref.name not in store:
                raise PlanError(f"node {identifier!r}: store key {ref.name!r} is not set")
            return store[ref.name]
        if gathered is not None and ref.name in gathered:
            values = []
            for out in gathered[ref.name]:
                if ref.field not in out:
                    raise PlanError(f"node {identifier!r}: {ref} has no field {ref.field!r} in an output")
                values.append(out[ref.field])
            return json.dumps(values)
        state_id = parents.get(ref.name)
        if state_id is None or state_id not in outputs_of:
            raise PlanError(f"node {identifier!r}: {ref} names {ref.name!r}, which is not on this state's lineage")
        outputs = outputs_of[state_id]
        if ref.field not in outputs:
            raise PlanError(f"node {identifier!r}: {ref}: {ref.name!r} produced no field {ref.field!r}")
        return str(outputs[ref.field])

    return resolve


def lineage_refs(topo: Topology, identifiers: list[str]) -> tuple[set[str], bool]:
    """Identifiers whose outputs the inputs of these nodes name, and whether they read the store."""
    needed: set[str] = set()
    reads_store = False
    for ident in identifiers:
        for value in topo.nodes[ident].inputs.values():
            try:
                refs = parse_refs(value)
            except PlaceholderError:
                continue
            needed.update(r.name for r in refs if r.kind == "output")
            reads_store = reads_store or any(r.kind == "store" for r in refs)
    return needed, reads_store


@dataclass(frozen=True)
class _Planning:
    """What planning children reads: the graph, the ancestors' outputs, the store, the input rules."""

    topo: Topology
    namespace_of: Callable[[str], str]
    outputs_of: dict[str, dict[str, Any]]
    store: dict[str, str]
    rules: InputRules


class _Outputs:
    """The outputs of one execution, as the states they become and the children each one gets."""

    def __init__(self, planning: _Planning, state: Source, outputs: list[Any], state_inputs: dict[str, str]) -> None:
        self.topo, self.namespace_of, self.reads = planning.topo, planning.namespace_of, planning
        self.state, self.outputs, self.state_inputs = state, outputs, state_inputs
        self.ids = [state.id, *(new_id() for _ in range(len(outputs) - 1))]
        self.child_ids = planning.topo.direct_children(state.identifier)
        # Children of one execution mostly belong to the same scopes: they share one dict of them (a
        # fan-out of 100,000 under a unite would otherwise hold 100,000 equal dicts).
        self.shared_scopes: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}

    def branch(self, index: int) -> str:
        return self.state.branch + (f"{index:06d}." if len(self.outputs) > 1 else "")

    def source(self, index: int) -> Source:
        s = self.state
        return Source(self.ids[index], s.run_id, s.identifier, s.parents, s.scopes, self.branch(index), s.id)

    def children(self, index: int, new_ids: bool = True) -> Iterator[NewState]:
        """The children of output `index` (without ids unless `new_ids`); PlanError if the inputs of one
        cannot be resolved."""
        src = self.source(index)
        lineage = {**src.parents, self.state.identifier: src.id}
        reads = self.reads
        known = {**reads.outputs_of, src.id: self.outputs[index]}
        for child in self.child_ids:
            spec = self.topo.nodes[child]
            scopes = inherited_scopes(self.topo, child, src)
            yield NewState(
                new_id() if new_ids else "",
                child,
                spec.node_name,
                self.namespace_of(child),
                render_inputs(spec.inputs, make_resolver(child, lineage, known, reads.store), reads.rules, child),
                lineage,
                self.shared_scopes.setdefault(tuple(scopes.items()), scopes),
                src.branch,
            )

    def build_children(self, size: int) -> Iterator[list[NewState]]:
        chunk: list[NewState] = []
        for index in range(len(self.outputs)):
            chunk.extend(self.children(index))
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def build_output_states(self, size: int) -> Iterator[list[NewState]]:
        """Outputs 1..n-1 as states, already SUCCESS (output 0 is the state that executed)."""
        s, spec = self.state, self.topo.nodes[self.state.identifier]
        namespace = self.namespace_of(s.identifier)
        for start in range(1, len(self.outputs), size):
            yield [
                NewState(
                    self.ids[i],
                    s.identifier,
                    spec.node_name,
                    namespace,
                    self.state_inputs,
                    s.parents,
                    s.scopes,
                    self.branch(i),
                    StateStatus.SUCCESS,
                    self.outputs[i],
                    s.id,
                )
                for i in range(start, min(start + size, len(self.outputs)))
            ]

    def opens(self, shapes: Counter[Shape]) -> list[ScopeOpen]:
        """The scopes this execution opens, each with the number of children it holds."""
        s = self.state
        execution = Source(s.id, s.run_id, s.identifier, s.parents, s.scopes, s.branch, s.id)
        opens = []
        for barrier in self.topo.opened_by(s.identifier):
            counts: Counter[str | None] = Counter()
            for (identifier, scopes), n in shapes.items():
                if identifier in barrier.region:
                    counts[dict(scopes).get(barrier.node)] += n
            # A unite opens its scope even when the execution returned no outputs: it fires at once.
            openers = [self.source(i) for i in range(len(self.outputs))] if barrier.per_output else [execution]
            for src in openers:
                sid = scope_id(barrier, src)
                opens.append(ScopeOpen(sid, barrier.node, counts[sid], src.id))
        return opens


def plan_success(
    topo: Topology,
    namespace_of: Callable[[str], str],
    state: Source,
    outputs: list[dict[str, Any]],
    outputs_of: dict[str, dict[str, Any]],
    store: dict[str, str],
    rules: InputRules = DEFAULT_RULES,
    state_inputs: dict[str, str] | None = None,
) -> SuccessPlan:
    """Output states, children and opened scopes after `state` executed with `outputs`.

    `outputs_of` holds the outputs of the ancestors the children read (by state id), `state_inputs` the
    inputs the output states share with `state`; raises PlanError when a child's inputs cannot be
    resolved. Every child is resolved here, so nothing is written for a plan that fails; a wide plan's
    states are then built again, a chunk at a time, as they are written (`Planned`).
    """
    fanned = _Outputs(_Planning(topo, namespace_of, outputs_of, store, rules), state, outputs, state_inputs or {})
    shapes: Counter[Shape] = Counter()
    kept: list[NewState] | None = []  # the children, until there are too many to hold
    for index in range(len(outputs)):
        for child in fanned.children(index, new_ids=kept is not None):
            shapes[shape_of(child.identifier, child.scopes)] += 1
            if kept is not None:
                kept.append(child)
        if kept is not None and len(kept) > BUILT_AT_ONCE:
            kept = None
    output_shapes: Counter[Shape] = Counter()
    if len(outputs) > 1:
        output_shapes[shape_of(state.identifier, state.scopes)] = len(outputs) - 1
    return SuccessPlan(
        Planned(max(0, len(outputs) - 1), output_shapes, fanned.build_output_states),
        Planned(shapes.total(), shapes, fanned.build_children, kept),
        fanned.opens(shapes),
    )


def barrier_fires(barrier: Barrier, failed: int, pruned: int) -> bool:
    """Whether a barrier whose scope just emptied creates its state."""
    if barrier.strategy == "ALL_DONE":
        return True
    if barrier.strategy == JOIN:
        return failed == 0 and pruned == 0
    return failed == 0


def plan_barrier_state(
    topo: Topology,
    namespace_of: Callable[[str], str],
    barrier: Barrier,
    opener: Source,
    scope: str,
    gathered: dict[str, list[tuple[str, dict[str, Any]]]],
    outputs_of: dict[str, dict[str, Any]],
    store: dict[str, str],
    rules: InputRules = DEFAULT_RULES,
) -> NewState:
    """The state of a barrier whose scope emptied.

    `gathered` maps each region node (and the awaited node) to its SUCCESS
    states in the scope as (state id, outputs), in fan-out order. A unite reads
    them as JSON arrays; a join reads a node with exactly one state as a plain
    value, and several as an array.
    """
    spec = topo.nodes[barrier.node]
    if barrier.per_output:
        parents = {**opener.parents, barrier.over: opener.id}
        arrays: dict[str, list[dict[str, Any]]] = {}
        known = dict(outputs_of)
        for ident, items in gathered.items():
            if ident == barrier.over:
                # The join runs under one output of the awaited node: it reads that output.
                known.update({sid: out for sid, out in items if sid == opener.id})
                continue
            if len(items) == 1:
                parents[ident] = items[0][0]
                known[items[0][0]] = items[0][1]
            else:
                arrays[ident] = [out for _, out in items]
        resolve = make_resolver(barrier.node, parents, known, store, arrays)
    else:
        # As Exosphere: a unite's parents name the state it waited on (its lineage, as the validator
        # sees it, stops before it: no input can read it as one value, only as the gathered array).
        parents = {**opener.parents, barrier.over: opener.id}
        arrays = {ident: [out for _, out in items] for ident, items in gathered.items()}
        resolve = make_resolver(barrier.node, parents, outputs_of, store, arrays)
    return NewState(
        new_id(),
        barrier.node,
        spec.node_name,
        namespace_of(barrier.node),
        render_inputs(spec.inputs, resolve, rules, barrier.node),
        parents,
        inherited_scopes(topo, barrier.node, opener),
        opener.branch,
        fingerprint=scope,
    )


def plan_root(
    topo: Topology,
    namespace_of: Callable[[str], str],
    run_id: str,
    inputs: dict[str, Any],
    store: dict[str, str],
    rules: InputRules = DEFAULT_RULES,
) -> NewState:
    """The root state of a new run: template inputs overridden by the trigger's."""
    spec = topo.nodes[topo.root]
    merged = {**spec.inputs, **inputs}
    resolve = make_resolver(topo.root, {}, {}, store)
    return NewState(
        new_id(),
        topo.root,
        spec.node_name,
        namespace_of(topo.root),
        render_inputs(merged, resolve, rules, topo.root),
        {},
        {},
        "",
    )


@dataclass(frozen=True)
class CompiledGraph:
    """One stored version of a template with its topology, as workers and the client use it."""

    template: GraphTemplate
    topology: Topology
    version: int
    secrets_cipher: str
    hidden: tuple[str, ...] = ()  # the secret values, once a process has decrypted them (see `with_secrets`)

    def with_secrets(self, secrets: dict[str, str]) -> CompiledGraph:
        """This graph knowing its secret values, so that what it renders hides them."""
        return replace(self, hidden=tuple(v for v in secrets.values() if v))

    def input_rules(self, max_bytes: int) -> InputRules:
        """The rules its rendered inputs obey in a process capped at `max_bytes`."""
        return InputRules(max_bytes, self.hidden)

    def namespace_of(self, identifier: str) -> str:
        return self.topology.nodes[identifier].namespace or self.template.namespace

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CompiledGraph:
        """Compile a stored template row (templates are validated before they are stored)."""
        template = GraphTemplate.model_validate(row["template"])
        topology, errors = analyse(template.nodes)
        if topology is None:
            raise PlanError(f"stored graph {template.name!r} is invalid: {errors}")
        return cls(template, topology, row["version"], row["secrets_cipher"])
