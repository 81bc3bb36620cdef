"""`${{ id.outputs.field }}` and `${{ store.key }}` placeholders: parsing and rendering."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import PlaceholderError

# The body may not hold another `${{`: "${{ a ${{ b.outputs.c }}" is an unterminated
# placeholder followed by a good one, not one placeholder with a strange body.
_PLACEHOLDER = re.compile(r"\$\{\{((?:(?!\$\{\{).)*?)\}\}", re.DOTALL)
_OPEN = "${{"
_OUTPUT_REF = re.compile(r"^([\w-]+)\.outputs\.([\w-]+)$")
_STORE_REF = re.compile(r"^store\.([^.\s]+)$")


@dataclass(frozen=True)
class Ref:
    """One placeholder: an ancestor's output field, or a store key."""

    kind: str  # "output" or "store"
    name: str  # identifier for outputs, key for store
    field: str = ""

    def __str__(self) -> str:
        if self.kind == "store":
            return f"${{{{ store.{self.name} }}}}"
        return f"${{{{ {self.name}.outputs.{self.field} }}}}"


def as_text(value: Any) -> str:
    """Template values are strings in v1; numbers, booleans and JSON structures are stringified."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) or value is None:
        return "" if value is None else str(value)
    # default=str: a value that is not JSON is rejected by validation; here it must not crash it.
    return json.dumps(value, separators=(",", ":"), default=str)


def scan_refs(value: Any) -> tuple[list[Ref], list[str]]:
    """Every placeholder of `value` that parses, in order, and a problem text for each one that does not."""
    text = as_text(value)
    refs: list[Ref] = []
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(text):
        body = match.group(1).strip()
        if (m := _STORE_REF.match(body)) is not None:
            refs.append(Ref("store", m.group(1)))
        elif (m := _OUTPUT_REF.match(body)) is not None and m.group(1) != "store":
            refs.append(Ref("output", m.group(1), m.group(2)))
        else:
            problems.append(
                f"placeholder {match.group(0)!r} does not parse: expected "
                "'${{ <identifier>.outputs.<field> }}' or '${{ store.<key> }}'"
            )
    leftover = _PLACEHOLDER.sub("", text)
    start = leftover.find(_OPEN)
    while start != -1:
        end = leftover.find(_OPEN, start + len(_OPEN))
        fragment = leftover[start : end if end != -1 else len(leftover)].rstrip()
        shown = fragment if len(fragment) <= 60 else fragment[:57] + "..."
        problems.append(f"placeholder {shown!r} is unterminated: '${{{{' without a closing '}}}}'")
        start = end
    return refs, problems


def parse_refs(value: Any) -> list[Ref]:
    """Every placeholder in `value`, in order; raises PlaceholderError naming a bad one."""
    refs, problems = scan_refs(value)
    if problems:
        raise PlaceholderError("; ".join(problems))
    return refs


@lru_cache(maxsize=4096)
def _problems(text: str) -> str | None:
    """Why a template text does not parse, or None. Cached: every state of a node renders the same texts."""
    return "; ".join(scan_refs(text)[1]) or None


def render(value: Any, resolve: Callable[[Ref], str]) -> str:
    """`value` with each placeholder replaced by `resolve(ref)`; the text around is kept."""
    text = as_text(value)
    if "${{" not in text:
        return text
    if (problem := _problems(text)) is not None:  # raise on malformed input before substituting anything
        raise PlaceholderError(problem)

    def substitute(match: re.Match[str]) -> str:
        body = match.group(1).strip()
        if (m := _STORE_REF.match(body)) is not None:
            return resolve(Ref("store", m.group(1)))
        m = _OUTPUT_REF.match(body)
        assert m is not None
        return resolve(Ref("output", m.group(1), m.group(2)))

    return _PLACEHOLDER.sub(substitute, text)
