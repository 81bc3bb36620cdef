"""What the `exo-celery` command line prints: one-line errors, JSON, status colours, and the tree of a run."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from ..errors import GraphValidationError


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps long ids on one line instead of rich's 80-column default.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=None if stream.isatty() else 200)


console = make_console()
err_console = make_console(stderr=True)


STATUS_STYLE = {
    "SUCCESS": "green",
    "ERRORED": "red",
    "FAILED": "red",
    "NEXT_CREATED_ERROR": "red",
    "CANCELLED": "magenta",
    "PRUNED": "yellow",
    "RETRY_CREATED": "dim",
    "RUNNING": "cyan",
    "QUEUED": "cyan",
    "CREATED": "blue",
    "PENDING": "blue",
}


_errors_as_json = False


def json_errors(enabled: bool) -> None:
    """With --json, errors are a JSON object on stdout ({"error", "type"}) instead of a line on stderr."""
    global _errors_as_json
    _errors_as_json = enabled


def report_error(message: str, kind: str = "ExoError") -> None:
    """One error: a line on stderr, or with --json `{"error": ..., "type": ...}` on stdout."""
    if _errors_as_json:
        sys.stdout.write(json.dumps({"error": one_line(message), "type": kind}) + "\n")
    else:
        err_console.print(f"[red]error:[/red] {escape(one_line(message))}")


def fail(message: str, kind: str = "ExoError", code: int = 1) -> NoReturn:
    """Report one error and exit with `code`."""
    report_error(message, kind)
    raise typer.Exit(code)


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def error_text(exc: BaseException) -> str:
    if isinstance(exc, GraphValidationError):
        return f"graph {exc.graph_name!r} is invalid: " + "; ".join(one_line(e) for e in exc.errors)
    return one_line(str(exc)) or type(exc).__name__


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def status_text(status: str) -> str:
    style = STATUS_STYLE.get(status, "white")
    return f"[{style}]{status}[/{style}]"


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def safe_url(url: str) -> str:
    """A URL without its password (the ledger's one rule, imported late so the CLI starts without SQLAlchemy)."""
    from ..ledger.db import without_password

    return without_password(url)


def waiting_lines(run: dict[str, Any]) -> list[str]:
    """One line per node of the run whose states wait for a runtime (`get_run`'s `waiting`), plain text."""
    return [
        f"waiting for a runtime: {w['reason']} ({w['states']} state{'s' if w['states'] != 1 else ''})"
        for w in run.get("waiting") or []
    ]
def watch_tree(
    fetch: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]], interval: float, show: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Redraw the run's tree in place (rich.live) until the run ends; returns the last run and states.

    The final tree stays on screen. Reading a big run takes a while: the pause grows to twice that.
    """
    from rich.live import Live

    from ..status import TERMINAL_RUNS, RunStatus

    with Live(console=console, auto_refresh=False, transient=False) if show else nullcontext() as live:
        while True:
            started = time.monotonic()
            run, states = fetch()
            if live is not None:
                live.update(run_tree(run, states), refresh=True)
            if RunStatus(run["status"]) in TERMINAL_RUNS:
                return run, states
            time.sleep(max(interval, 2 * (time.monotonic() - started)))


def run_tree(run: dict[str, Any], states: list[dict[str, Any]]) -> Tree:
    """The states of a run as a rich Tree.

    A state hangs under its nearest ancestor: of the states in its lineage (`parents`), the one
    with the longest lineage itself. Retries are folded into the attempt that superseded them.
    """
    by_id = {s["id"]: s for s in states}
    superseded_by = {s["retry_of"]: s["id"] for s in states if s.get("retry_of") in by_id}

    def latest(state_id: str) -> str:
        seen = set()
        while state_id in superseded_by and state_id not in seen:
            seen.add(state_id)
            state_id = superseded_by[state_id]
        return state_id

    def earlier(state: dict[str, Any]) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        current = state.get("retry_of")
        while current in by_id and len(chain) < len(states):
            chain.append(by_id[current])
            current = by_id[current].get("retry_of")
        return list(reversed(chain))

    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in states:
        if s["id"] in superseded_by:
            continue
        lineage = [p for p in (s.get("parents") or {}).values() if p in by_id and p != s["id"]]
        parent = max(lineage, key=lambda p: len(by_id[p].get("parents") or {}), default=None)
        children.setdefault(latest(parent) if parent else None, []).append(s)

    counts = ", ".join(f"{k} {v}" for k, v in sorted((run.get("counts") or {}).items()))
    took = duration(seconds_between(run["created_at"], run.get("finished_at")))
    waiting = "".join(f"\n[yellow]{escape(line)}[/yellow]" for line in waiting_lines(run))
    tree = Tree(
        f"run [bold]{run['run_id']}[/bold]  graph {escape(run['graph_name'])!r}  namespace "
        f"{escape(run['namespace'])!r}  {status_text(run['status'])}  {took}  ({counts}){waiting}"
    )

    def add(branch: Tree, parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: (s["created_at"] or "", s["id"])):
            node = branch.add(state_label(s))
            for attempt in earlier(s):
                node.add(state_label(attempt, dim=True))
            if depth < 1000:
                add(node, s["id"], depth + 1)

    add(tree, None, 0)
    return tree


def state_label(s: dict[str, Any], dim: bool = False) -> str:
    start = max(filter(None, [s.get("created_at"), s.get("due_at")]), default=None)
    never_ran = s["status"] in {"CREATED", "QUEUED"} or s.get("attempts") == 0
    took = "-" if never_ran else duration(seconds_between(start, s.get("updated_at")))
    parts = [
        f"[bold]{escape(s['identifier'])}[/bold] ({escape(s['node_name'])})",
        status_text(s["status"]),
        took,
    ]
    if s.get("attempts") == 0 and s["status"] == "SUCCESS":
        parts.append("[dim]fan-out output[/dim]")  # created with its outputs by the execution of a sibling
    if s.get("retry_count"):
        parts.append(f"retry {s['retry_count']}")
    if s.get("waiting_reason"):
        parts.append(f"[yellow]waiting: {escape(s['waiting_reason'])}[/yellow]")
    parts.append(f"[dim]{s['id']}[/dim]")
    if s.get("error"):
        error = one_line(s["error"])
        parts.append(f"[red]error: {escape(error[:200] + ('…' if len(error) > 200 else ''))}[/red]")
    label = "  ".join(parts)
    return f"[dim]attempt: {label}[/dim]" if dim else label
