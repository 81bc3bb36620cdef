"""Graph validation (SPEC 3): every problem of a template, listed at once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .cron import cron_problem
from .graph import CronTrigger, GraphNodeModel, StoreConfigModel
from .mapping import scan_refs
from .topology import Topology, analyse

# One rule for every name (graph, namespace, node, identifier) on every backend: ASCII letters,
# digits, '_' and '-'. Names become parts of queue, exchange and task names (`<prefix>.<ns>.<Node>`),
# and kombu's filesystem transport (the embedded default) accepts only [A-Za-z0-9._-] there; '.'
# separates the parts, so it is not allowed inside one.
IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_NAME = 128


@dataclass
class ValidationReport:
    """Problems found; `missing_nodes` are the ones a starting worker may still register."""

    errors: list[str] = field(default_factory=list)
    missing_nodes: list[tuple[str, str]] = field(default_factory=list)
    topology: Topology | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.missing_nodes

    def all_errors(self) -> list[str]:
        missing = [
            f"node {name!r} is not registered in namespace {ns!r} (start a worker that serves it)"
            for ns, name in self.missing_nodes
        ]
        return self.errors + missing


MAX_STORE_KEY = 256


def store_key_problem(key: object) -> str | None:
    """Why `key` cannot be a store key, or None."""
    if not isinstance(key, str) or not key or "." in key or len(key) > MAX_STORE_KEY or text_problem(key) is not None:
        shown = key[:60] if isinstance(key, str) else key
        return f"store key {shown!r} must be 1-{MAX_STORE_KEY} characters of valid text, without '.' or NUL"
    return None


def name_problem(kind: str, value: Any) -> str | None:
    """Why `value` cannot be a graph name, namespace or identifier, or None."""
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        shown = value if not isinstance(value, str) else value[:60]
        return f"{kind} {shown!r} must be 1-{MAX_NAME} ASCII letters, digits, '_' or '-'"
    return None


def text_problem(value: str) -> str | None:
    """Why the ledger cannot store `value` as text (a NUL, or a lone surrogate that is not UTF-8), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode text (a lone surrogate {value[exc.start]!r} at position {exc.start})"
    return None


def _name_problems(nodes: list[GraphNodeModel]) -> list[str]:
    """Every node's identifier, node name and namespace that breaks the name rule."""
    problems: list[str] = []
    for i, n in enumerate(nodes):
        for kind, value in (("identifier", n.identifier), ("node_name", n.node_name), ("namespace", n.namespace)):
            if (problem := name_problem(f"nodes[{i}] {kind}", value)) is not None:
                problems.append(problem)
    return problems


def _secret_problems(secrets: dict[str, str]) -> list[str]:
    """Secret names that are not identifiers, then secret values that are not strings."""
    problems = [
        f"secret name {name!r} must be a valid identifier"
        for name in secrets
        if not isinstance(name, str) or not name.isidentifier()
    ]
    problems += [
        f"secret {name!r} must be a string, got {type(value).__name__}"
        for name, value in secrets.items()
        if not isinstance(value, str)
    ]
    return problems


def _store_problems(store_config: StoreConfigModel) -> list[str]:
    """Store keys (required, then defaulted) that break the key rule, then default values the ledger cannot store."""
    problems: list[str] = []
    for where, keys in (
        ("store_config.required_keys", store_config.required_keys),
        ("store_config.default_values", list(store_config.default_values)),
    ):
        problems += [f"{where}: {problem}" for key in keys if (problem := store_key_problem(key)) is not None]
    for key, value in store_config.default_values.items():
        if (problem := text_problem(value)) is not None:
            problems.append(f"store_config.default_values: value of {key!r} {problem}")
    return problems


def _cron_problems(triggers: list[CronTrigger]) -> list[str]:
    """Cron triggers whose expression does not parse."""
    return [
        f"triggers[{i}]: {problem}"
        for i, t in enumerate(triggers)
        if (problem := cron_problem(t.expression)) is not None
    ]


def _schema_problems(n: GraphNodeModel, schema: dict[str, Any], secrets: dict[str, str]) -> list[str]:
    """A node's inputs and the graph's secrets against its registered schema."""
    problems = [
        f"node {n.identifier!r}: required input {name!r} of {n.node_name} is missing from its inputs"
        for name in schema["required_inputs"]
        if name not in n.inputs
    ]
    problems += [
        f"node {n.identifier!r}: unknown input {name!r} for {n.node_name}"
        for name in n.inputs
        if name not in schema["inputs"]
    ]
    problems += [
        f"node {n.identifier!r}: secret {name!r} needed by {n.node_name} is not in the graph's secrets"
        for name in schema["required_secrets"]
        if name not in secrets
    ]
    return problems


_LineageRef = tuple[str, str, Any]  # (node identifier, input field, the placeholder's reference)


def _ref_problems(
    n: GraphNodeModel, identifiers: set[str], structured: bool, lineage_refs: list[_LineageRef]
) -> list[str]:
    """A node's placeholders: syntax and unknown nodes; references to check on the lineage go to `lineage_refs`
    (only when `structured`: lineage is unknown while the structure is broken)."""
    problems: list[str] = []
    for field_name, value in n.inputs.items():
        refs, syntax = scan_refs(value)
        problems.extend(f"node {n.identifier!r}: input {field_name!r}: {problem}" for problem in syntax)
        for ref in refs:
            if ref.kind == "store":
                continue
            if ref.name not in identifiers:
                problems.append(f"node {n.identifier!r}: input {field_name!r}: {ref} names unknown node {ref.name!r}")
            elif structured:
                lineage_refs.append((n.identifier, field_name, ref))
    return problems


def _lineage_problems(
    topology: Topology, registry: dict[tuple[str, str], dict[str, Any]], lineage_refs: list[_LineageRef]
) -> list[str]:
    """References to nodes off the reader's lineage, or to output fields the named node does not have.

    Answered in one pass (`Topology.unreadable`): a per-node lineage set is quadratic.
    """
    wanted: dict[str, set[str]] = {}
    for ident, _, ref in lineage_refs:
        wanted.setdefault(ident, set()).add(ref.name)
    unreadable = topology.unreadable(wanted)
    problems: list[str] = []
    for ident, field_name, ref in lineage_refs:
        where = f"node {ident!r}: input {field_name!r}: {ref}"
        if ref.name in unreadable.get(ident, ()):
            problems.append(f"{where} names {ref.name!r}, which is not an ancestor on this node's lineage")
            continue
        source = topology.nodes[ref.name]
        source_schema = registry.get((source.namespace or "", source.node_name))
        if source_schema is not None and ref.field not in source_schema["outputs"]:
            problems.append(
                f"{where}: {source.node_name} has no output field {ref.field!r} (it has {source_schema['outputs']})"
            )
    return problems


def validate_template(
    nodes: list[GraphNodeModel],
    secrets: dict[str, str],
    store_config: StoreConfigModel,
    triggers: list[CronTrigger],
    registry: dict[tuple[str, str], dict[str, Any]],
) -> ValidationReport:
    """Check a template against SPEC 3; `registry` maps (namespace, node_name) to a node schema."""
    report = ValidationReport()
    errors = report.errors
    errors += _name_problems(nodes)
    errors += _secret_problems(secrets)
    errors += _store_problems(store_config)
    errors += _cron_problems(triggers)

    topology, structural = analyse(nodes)
    errors.extend(structural)
    report.topology = topology
    identifiers = {n.identifier for n in nodes}
    missing: set[tuple[str, str]] = set()
    lineage_refs: list[_LineageRef] = []
    for n in nodes:
        node_key = (n.namespace or "", n.node_name)
        schema = registry.get(node_key)
        if schema is None:
            if node_key not in missing:
                missing.add(node_key)
                report.missing_nodes.append(node_key)
        else:
            errors += _schema_problems(n, schema, secrets)
        errors += _ref_problems(n, identifiers, topology is not None, lineage_refs)
    if topology is not None:
        errors += _lineage_problems(topology, registry, lineage_refs)
    return report
