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
from collections.abc import Callable
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


@dataclass
class SuccessPlan:
    """Everything a successful execution changes besides its own row."""

    output_states: list[NewState] = field(default_factory=list)  # fan-out outputs 1..n-1
    children: list[NewState] = field(default_factory=list)
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


def plan_success(
    topo: Topology,
    namespace_of: Callable[[str], str],
    state: Source,
    outputs: list[dict[str, Any]],
    outputs_of: dict[str, dict[str, Any]],
    store: dict[str, str],
    rules: InputRules = DEFAULT_RULES,
) -> SuccessPlan:
    """Output states, children and opened scopes after `state` executed with `outputs`.

    `outputs_of` holds the outputs of the ancestors the children read (by state id);
    raises PlanError when a child's inputs cannot be resolved.
    """
    plan = SuccessPlan()
    multi = len(outputs) > 1
    sources: list[Source] = []
    for index, out in enumerate(outputs):
        out_id = state.id if index == 0 else new_id()
        branch = state.branch + (f"{index:06d}." if multi else "")
        src = Source(out_id, state.run_id, state.identifier, state.parents, state.scopes, branch, state.id)
        sources.append(src)
        if index > 0:
            spec = topo.nodes[state.identifier]
            plan.output_states.append(
                NewState(
                    out_id,
                    state.identifier,
                    spec.node_name,
                    namespace_of(state.identifier),
                    {},
                    state.parents,
                    state.scopes,
                    branch,
                    StateStatus.SUCCESS,
                    out,
                    state.id,
                )
            )

    child_ids = topo.direct_children(state.identifier)
    # Children of one execution mostly belong to the same scopes: they share one dict of them (a fan-out
    # of 100,000 under a unite would otherwise hold 100,000 equal dicts until its rows are written).
    shared_scopes: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for src, out in zip(sources, outputs, strict=True):
        lineage = {**src.parents, state.identifier: src.id}
        known = {**outputs_of, src.id: out}
        for child in child_ids:
            spec = topo.nodes[child]
            resolve = make_resolver(child, lineage, known, store)
            scopes = inherited_scopes(topo, child, src)
            plan.children.append(
                NewState(
                    new_id(),
                    child,
                    spec.node_name,
                    namespace_of(child),
                    render_inputs(spec.inputs, resolve, rules, child),
                    lineage,
                    shared_scopes.setdefault(tuple(scopes.items()), scopes),
                    src.branch,
                )
            )

    execution = Source(state.id, state.run_id, state.identifier, state.parents, state.scopes, state.branch, state.id)
    for barrier in topo.opened_by(state.identifier):
        # One pass over the children per barrier (a join opens one scope per output: no rescans).
        counts = Counter(c.scopes.get(barrier.node) for c in plan.children if c.identifier in barrier.region)
        # A unite opens its scope even when the execution returned no outputs: it fires at once.
        openers = sources if barrier.per_output else [execution]
        for src in openers:
            sid = scope_id(barrier, src)
            plan.opens.append(ScopeOpen(sid, barrier.node, counts[sid], src.id))
    return plan


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
