"""The client's argument checks that need no ledger: ids, trigger arguments and values, secrets in a template."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import NotFoundError
from ..mapping import as_text
from ..validate import store_key_problem, text_problem

_ID = re.compile(r"[0-9a-f]{32}")


def check_id(kind: str, value: object) -> str:
    """Run and state ids are 32 hex digits; anything else cannot exist."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise NotFoundError(f"{kind} {str(value)[:80]!r} does not exist")
    return value


def trigger_value_problems(inputs: dict[Any, Any], store: dict[Any, Any]) -> list[str]:
    """What is wrong with a trigger's input and store keys and values (strings, no NUL, store key rules)."""
    problems: list[str] = []
    for kind, values in (("input", inputs), ("store", store)):
        for key, value in values.items():
            if kind == "store" and (problem := store_key_problem(key)) is not None:
                problems.append(problem)
                continue
            if isinstance(key, str) and kind == "input" and (problem := text_problem(key)) is not None:
                problems.append(f"input key {key[:60]!r} {problem}")
            if isinstance(value, str) and (problem := text_problem(value)) is not None:
                problems.append(f"{kind} {str(key)[:60]!r} {problem}")
            if not isinstance(key, str) or not key or (kind == "store" and "." in key):
                problems.append(
                    f"{kind} key {key!r} must be a non-empty string" + (" without '.'" if kind == "store" else "")
                )
            if not isinstance(value, str):
                problems.append(f"{kind} {key!r} must be a string, got {type(value).__name__}")
    return problems


def secrets_in_template(nodes: list[Any], defaults: dict[str, str], secrets: dict[str, Any]) -> list[str]:
    """Template inputs or store defaults holding a secret's value: the template is stored in clear."""
    values = {name: value for name, value in secrets.items() if isinstance(value, str) and value}
    found: list[str] = []
    places = [(f"node {n.identifier!r}: input {k!r}", as_text(v)) for n in nodes for k, v in n.inputs.items()]
    places += [(f"store_config.default_values: {k!r}", v) for k, v in defaults.items() if isinstance(v, str)]
    for where, text in places:
        for name, value in values.items():
            if value in text:
                found.append(f"{where} holds the value of secret {name!r} (read it from self.secrets in the node)")
    return found


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


MAX_IDEMPOTENCY_KEY = 300
_SURROGATE = re.compile("[\ud800-\udfff]")


def trigger_problems(inputs: object, store: object, start_delay: object, idempotency_key: object) -> list[str]:
    """What is wrong with a trigger's arguments themselves (before any value or the graph is looked at)."""
    problems: list[str] = []
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        or "\x00" in idempotency_key
        or _SURROGATE.search(idempotency_key)
    ):
        problems.append(f"idempotency_key must be a string of 1-{MAX_IDEMPOTENCY_KEY} characters without NUL")
    for kind, given in (("inputs", inputs), ("store", store)):
        if given is not None and not isinstance(given, dict):
            problems.append(f"{kind} must be a dict of strings, got {type(given).__name__}")
    if not isinstance(start_delay, (int, float)) or not math.isfinite(start_delay) or start_delay < 0:
        problems.append(f"start_delay must be a finite number of milliseconds >= 0, got {start_delay!r}")
    return problems


@dataclass
class RunRequest:
    """What a trigger asks for, checked; `dropped` collects the inputs the root does not take."""

    graph_name: str
    given: dict[str, str]
    store: dict[str, str]
    start_delay: float
    value_problems: list[str]
    dropped: list[str] = field(default_factory=list)
