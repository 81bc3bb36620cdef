"""The commands of `exo-celery`.

Every command takes `--namespace/-n` (default `$EXO_NAMESPACE`, else `default`) and `--json`
(machine-readable output on stdout), either before or after the command name. Errors print one
line on stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ExoError
from ..loading import load_nodes, split_specs
from .output import (
    console,
    duration,
    err_console,
    error_text,
    fail,
    json_errors,
    one_line,
    print_json,
    report_error,
    run_tree,
    safe_url,
    seconds_between,
    status_text,
    waiting_lines,
    watch_tree,
)

if TYPE_CHECKING:
    from ..client import StateManager

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run Exosphere-style graphs on Celery.",
)
db_app = typer.Typer(no_args_is_help=True, help="Manage the ledger's schema (Alembic migrations).")
app.add_typer(db_app, name="db")


NamespaceOption = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="namespace (default: $EXO_NAMESPACE, else 'default')", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON on stdout instead of text")]


@dataclass
class Globals:
    """Options given before the command name."""

    namespace: str | None = None
    as_json: bool = False


def _print_version(given: bool) -> None:
    if given:
        from .. import __version__

        sys.stdout.write(f"exo-celery {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    ctx.obj = Globals(namespace, as_json)


def _namespace(ctx: typer.Context, given: str | None) -> str:
    outer = ctx.find_object(Globals)
    return given or (outer.namespace if outer else None) or os.environ.get("EXO_NAMESPACE") or "default"


def _json(ctx: typer.Context, given: bool) -> bool:
    outer = ctx.find_object(Globals)
    return given or bool(outer and outer.as_json)


def _manager(namespace: str, **options: Any) -> StateManager:
    from ..client import StateManager

    return StateManager(namespace, **options)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=f"'{option}'")
        result[key] = value
    return result


# -- processes ----------------------------------------------------------------
@app.command()
def worker(
    ctx: typer.Context,
    nodes: list[str] = typer.Option(..., "--nodes", help="module or module:attr holding node classes"),
    namespace: NamespaceOption = None,
    name: str = typer.Option("worker", help="runtime name (the Celery node name prefix)"),
    concurrency: int = typer.Option(
        0, "--concurrency", "-c", help="node executions at once (default 4, as Exosphere's workers=4)"
    ),
    pool: str = typer.Option(
        "", "--pool", "-P", help="Celery pool: threads (default; async and I/O-bound nodes), prefork (CPU-bound), solo"
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Run a Celery worker serving NODES of NAMESPACE on their queues, <prefix>.<namespace>.<NodeName>
    (see docs/execution.md for pools and docs/routing.md for queues)."""
    from ..runtime import Runtime

    sys.path.insert(0, os.getcwd())
    classes = [cls for spec in nodes for item in split_specs(spec) for cls in load_nodes(item)]
    runtime = Runtime(
        _namespace(ctx, namespace), name, classes, concurrency=concurrency or None, pool=pool or None, loglevel=loglevel
    )
    runtime.start()


@app.command()
def beat(
    ctx: typer.Context,
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    check: bool = typer.Option(False, "--check", help="do not run: exit 1 unless a beat ticked recently"),
    name: str | None = typer.Option(None, "--name", help="heartbeat name (default: beat@<hostname>)"),
    any_beat: bool = typer.Option(False, "--any", help="with --check: any beat's heartbeat will do"),
    max_age: float | None = typer.Option(
        None, "--max-age", min=0.1, help="with --check: seconds (default: 3 sweep intervals, at least 10)"
    ),
    as_json: JsonOption = False,
) -> None:
    """Run the beat process: due states, recovery sweep, cron triggers, retention, heartbeat."""
    import logging

    from ..beat import Beat, default_beat_name

    if check:
        _check_beat(None if any_beat else name or default_beat_name(), max_age, _json(ctx, as_json))
        return
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    process = Beat()
    process.name = name or process.name
    process.run_forever()


def _check_beat(name: str | None, max_age: float | None, as_json: bool) -> None:
    """One line: how long ago the beat last ticked; exit 1 when never or too long ago."""
    from ..beat import heartbeat_limit
    from ..errors import NoHeartbeatTable
    from ..ledger.heartbeats import last_beat
    from ..settings import load_settings

    settings = load_settings()
    limit = max_age if max_age is not None else heartbeat_limit(settings)
    who = f"beat {name!r}" if name else "any beat"
    try:
        found = last_beat(settings.ledger_url, name)
    except NoHeartbeatTable:
        found, problem = None, "the ledger has no heartbeat table (run `exo-celery db upgrade`, then start beat)"
    else:
        problem = f"no heartbeat of {who} in the ledger {safe_url(settings.ledger_url)} (is beat running?)"
    result: dict[str, Any] = {"ok": False, "name": name, "limit": limit, "age": None}
    if found is not None:
        result.update(name=found.name, host=found.host, pid=found.pid, age=round(found.age, 3))
        problem = f"beat {found.name!r} last ticked {found.age:.1f} s ago (limit {limit:g} s): it is stuck or stopped"
        result["ok"] = found.age <= limit
    if as_json:
        print_json({**result, **({} if result["ok"] else {"error": problem, "type": "BeatUnhealthy"})})
        if not result["ok"]:
            raise typer.Exit(1)
        return
    if not result["ok"]:
        fail(problem, "BeatUnhealthy")
    assert found is not None
    console.print(
        f"beat {found.name!r} (pid {found.pid} on {found.host}) ticked {found.age:.1f} s ago (limit {limit:g} s)",
        markup=False,
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address (beyond loopback only with EXO_API_KEY)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="port (0: any free port, printed)"),
) -> None:
    """Serve the HTTP API (Exosphere's v0 routes), the dashboard at / and /metrics."""
    from ..server import serve as run_server

    run_server(host, port)


@app.command()
def demo(
    ctx: typer.Context,
    timeout: float = typer.Option(120.0, help="seconds to wait for the run"),
    as_json: JsonOption = False,
) -> None:
    """Start a worker, run a fan-out + unite graph on it, print the outputs, and stop."""
    from .. import demo as demo_graph
    from ..settings import load_settings

    as_json = _json(ctx, as_json)
    out = err_console if as_json else console
    settings = load_settings()
    log_path = settings.home_dir / "demo-worker.log"
    started = time.monotonic()
    out.print(f"ledger: {safe_url(settings.ledger_url)}  broker: {safe_url(settings.broker)}")
    argv = ["worker", "--namespace", demo_graph.NAMESPACE, "--nodes", "exo_celery.demo:NODES", "--name", "demo"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exo_celery.cli", *argv, "--concurrency", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the pool's children stop with it
        )
    try:
        manager = _manager(demo_graph.NAMESPACE, settings=settings, validation_timeout=60)
        manager.upsert_graph_sync(demo_graph.GRAPH, demo_graph.GRAPH_NODES, secrets={})
        created = manager.trigger_sync(demo_graph.GRAPH)
        out.print(f"triggered run {created['run_id']}")
        finished = manager.wait_sync(created["run_id"], timeout=timeout)
        states = manager.list_states_sync(created["run_id"])
        if as_json:
            print_json({"run": finished, "states": states})
        else:
            for s in states:
                console.print(
                    f"  {s['identifier']:<8} {s['status']:<8} inputs={s['inputs']} outputs={s['outputs']}",
                    markup=False,
                )
        out.print(
            f"run {finished['run_id']}: [bold]{finished['status']}[/bold] "
            f"in {time.monotonic() - started:.1f} s (worker log: {log_path})"
        )
        out.print(f"next: exo-celery show {finished['run_id']} -n {demo_graph.NAMESPACE}  (the run as a tree)")
        if finished["status"] != "SUCCESS":
            raise typer.Exit(1)
    except TimeoutError as exc:
        fail(f"{exc} (worker log: {log_path})", "TimeoutError")
    finally:
        _stop_worker(proc)


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Stop the demo's worker: a warm shutdown if it is quick, else kill it (the run is over: nothing is lost)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=1.5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# -- graphs and runs ------------------------------------------------------------
@app.command()
def upsert(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="the graph as Exosphere's JSON body: {secrets, nodes, retry_policy, ...}"),
    name: str | None = typer.Option(None, "--name", help="graph name (default: the file name without .json)"),
    validation_timeout: float = typer.Option(60.0, help="seconds to wait for workers to register the graph's nodes"),
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate and store a graph template from a JSON file."""
    from ..crypto import redact

    try:
        body = json.loads(file.read_text())
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}", type(exc).__name__)
    except ValueError as exc:
        fail(f"{file} is not valid JSON: {exc}", type(exc).__name__)
    graph_name = name or file.stem
    secrets = body.get("secrets") if isinstance(body, dict) else None
    hidden = [str(v) for v in secrets.values()] if isinstance(secrets, dict) else []
    manager = _manager(_namespace(ctx, namespace), validation_timeout=validation_timeout)
    try:
        before = manager.repo.latest_version(manager.namespace, graph_name)
        graph = manager.upsert_graph_json_sync(graph_name, body)
    except ExoError as exc:  # an error text must not echo a secret value given in the file
        fail(redact(error_text(exc), hidden), type(exc).__name__)
    unchanged = before == graph["version"]  # identical to the latest version: no new one was stored
    if _json(ctx, as_json):
        print_json({**graph, "unchanged": unchanged})
        return
    identifiers = ", ".join(n["identifier"] for n in graph["nodes"])
    secret_names = ", ".join(graph["secrets"]) or "none"
    console.print(
        f"graph {escape(graph['name'])!r} version {graph['version']} in namespace {escape(graph['namespace'])!r}: "
        f"[green]{graph['validation_status']}[/green] ({len(graph['nodes'])} nodes: {escape(identifiers)}; "
        f"secrets: {escape(secret_names)})" + ("; unchanged: same as the latest version" if unchanged else "")
    )


@app.command()
def trigger(
    ctx: typer.Context,
    graph: str = typer.Argument(..., help="graph name"),
    inputs: list[str] | None = typer.Option(None, "--input", "-i", help="root input KEY=VALUE (repeatable)"),
    store: list[str] | None = typer.Option(None, "--store", "-s", help="store value KEY=VALUE (repeatable)"),
    start_delay: int = typer.Option(0, "--start-delay", min=0, help="milliseconds before the root state runs"),
    wait: bool = typer.Option(False, "--wait", "-w", help="wait for the run to end, with a progress bar"),
    timeout: float | None = typer.Option(None, "--timeout", help="with --wait: give up after this many seconds"),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="a key of yours: triggering again with it returns the same run"
    ),
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a run of GRAPH. With --wait, exit 0 only if the run ends SUCCESS."""
    as_json = _json(ctx, as_json)
    given_inputs, given_store = _pairs(inputs, "--input"), _pairs(store, "--store")
    manager = _manager(_namespace(ctx, namespace))
    created = manager.trigger_sync(graph, given_inputs, given_store, start_delay, idempotency_key=idempotency_key)
    if not wait:
        if as_json:
            print_json(created)
        else:
            console.print(f"run {created['run_id']} of graph {escape(graph)!r}: {_created_text(created)}")
        return
    if not as_json:
        console.print(f"run {created['run_id']} of graph {escape(graph)!r}: {_created_text(created)}")
    try:
        finished = _wait_with_progress(manager, created["run_id"], timeout, show=not as_json)
    except TimeoutError as exc:
        fail(str(exc), "TimeoutError")
    errors = _run_errors(manager, finished) if finished["status"] == "FAILED" else []
    if as_json:
        print_json({**finished, "errors": errors} if errors else finished)
    else:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(finished["counts"].items()))
        took = duration(seconds_between(finished["created_at"], finished["finished_at"]))
        console.print(f"run {finished['run_id']}: {status_text(finished['status'])} in {took} ({counts})")
        for e in errors:
            console.print(
                f"  {escape(e['identifier'])} ({escape(e['node_name'])}) {status_text(e['status'])} "
                f"state {e['state_id']}: [red]{escape(one_line(e['error'] or '(no error text)'))}[/red]"
            )
    if finished["status"] != "SUCCESS":
        raise typer.Exit(1)


def _created_text(created: dict[str, Any]) -> str:
    """CREATED, or that an earlier trigger with the same idempotency key made the run."""
    if created.get("existing"):
        return f"{status_text(created['status'])} (already, by an earlier trigger with this idempotency key)"
    return status_text(created["status"])


def _run_errors(manager: StateManager, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The states that made a run FAILED, with their error texts (redacted as stored), oldest first."""
    failed = {"ERRORED", "NEXT_CREATED_ERROR"}
    return [
        {
            "state_id": s["id"],
            "identifier": s["identifier"],
            "node_name": s["node_name"],
            "status": s["status"],
            "retry_count": s["retry_count"],
            "error": s["error"],
        }
        for s in manager.list_states_sync(run["run_id"])
        if s["status"] in failed
    ]


def _wait_with_progress(manager: StateManager, run_id: str, timeout: float | None, show: bool) -> dict[str, Any]:
    """Wait for the run's end (notified, see `StateManager.wait`); the bar shows states finished out of
    states known so far, refreshed every half second while the run goes on, and a line says which node
    waits for a runtime (and when it no longer does)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..status import TERMINAL_STATES

    terminal = {s.value for s in TERMINAL_STATES}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, disable=not show, transient=False) as progress:
        task = progress.add_task("states finished", total=1, completed=0)
        shown: list[str] = []

        def show_run(run: dict[str, Any]) -> None:
            nonlocal shown
            counts: dict[str, int] = run["counts"]
            done = sum(n for status, n in counts.items() if status in terminal)
            progress.update(task, completed=done, total=max(1, sum(counts.values())), description=f"{run['status']:<9}")
            waiting = waiting_lines(run)
            if show and waiting != shown:  # a line when a node starts or stops waiting for a runtime
                for line in waiting or ["every waiting node has a live runtime now"]:
                    progress.console.print(f"[yellow]{escape(line)}[/yellow]")
                shown = waiting

        # Only the bar needs the run's counts while it goes on; without it, the ledger is read on
        # notification or every 2 s (the fallback for a lost notification).
        return manager.wait_sync(run_id, timeout, poll_interval=0.5 if show else None, on_read=show_run)


@app.command()
def runs(
    ctx: typer.Context,
    graph: str | None = typer.Option(None, "--graph", "-g", help="only runs of this graph"),
    limit: int = typer.Option(20, "--limit", min=1, help="how many (newest first)"),
    status: list[str] | None = typer.Option(
        None, "--status", "-s", help="only runs in this status (repeatable, or comma-separated: FAILED,RUNNING)"
    ),
    since: str | None = typer.Option(
        None, "--since", help="only runs created since: an ISO time (UTC unless it says) or an age (10m, 2h, 1d)"
    ),
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the namespace's runs, newest first."""
    from .since import parse_since

    ns = _namespace(ctx, namespace)
    statuses = [part.upper() for item in status or [] for part in split_specs(item)]
    try:
        since_at = None if since is None else parse_since(since, time.time())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--since'") from None
    found = _manager(ns).list_runs_sync(graph, limit, status=statuses or None, since=since_at)
    if _json(ctx, as_json):
        print_json(found)
        return
    if not found:
        filters = (f" for graph {escape(graph)!r}" if graph else "") + (
            f" in status {', '.join(statuses)}" if statuses else ""
        )
        console.print(f"no runs in namespace {escape(ns)!r}{filters}" + (f" since {escape(since)}" if since else ""))
        return
    table = Table(title=f"runs in namespace {ns!r}", title_justify="left")
    for column in ("run id", "graph", "status", "created (UTC)", "duration"):
        table.add_column(column, no_wrap=True)
    for r in found:
        end = r["finished_at"] or (datetime.now(datetime.fromisoformat(r["created_at"]).tzinfo).isoformat())
        table.add_row(
            r["run_id"],
            escape(r["graph_name"]),
            status_text(r["status"]),
            r["created_at"][:19].replace("T", " "),
            duration(seconds_between(r["created_at"], end)),
        )
    console.print(table)


@app.command()
def show(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="run id"),
    watch: bool = typer.Option(False, "--watch", "-w", help="keep the tree refreshed until the run ends"),
    interval: float = typer.Option(0.5, "--interval", min=0.1, help="with --watch: seconds between refreshes"),
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """A run and its states as a tree (each state under the state it came from)."""
    manager = _manager(_namespace(ctx, namespace))

    def fetch() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return manager.get_run_sync(run_id), manager.list_states_sync(run_id)

    if watch:
        run, states = watch_tree(fetch, interval, show=not _json(ctx, as_json))
    else:
        run, states = fetch()
    if _json(ctx, as_json):
        print_json({"run": run, "states": states})
        return
    if not watch:  # the live display already left the final tree on screen
        console.print(run_tree(run, states))


@app.command()
def retry(
    ctx: typer.Context,
    state_id: str = typer.Argument(..., help="an ERRORED, NEXT_CREATED_ERROR or CANCELLED state"),
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retry a failed state (repeating the command returns the same retry)."""
    result = _manager(_namespace(ctx, namespace)).manual_retry_sync(state_id)
    if _json(ctx, as_json):
        print_json(result)
        return
    console.print(
        f"state {result['state_id']} retries {result['retry_of']} (retry {result['retry_count']}, "
        f"run {result['run_id']}): {status_text(result['status'])}"
    )


@app.command()
def cancel(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="run id"),
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a run: its states never run, executing ones are stopped (see docs/execution.md)."""
    result = _manager(_namespace(ctx, namespace)).cancel_sync(run_id)
    if _json(ctx, as_json):
        print_json(result)
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.get("counts", {}).items()))
    console.print(f"run {result['run_id']}: {status_text(result['status'])} ({counts})")


# -- ledger schema --------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: str = typer.Option("head", help="target revision"),
    as_json: JsonOption = False,
) -> None:
    """Create the ledger's tables, or upgrade them to the newest revision (safe to repeat)."""
    from ..ledger.db import open_engine
    from ..ledger.migrations import current_revision, upgrade
    from ..settings import load_settings

    url = load_settings().ledger_url
    engine = open_engine(url, make_folder=True)
    try:
        before = current_revision(engine)
        after = upgrade(engine, revision)
    finally:
        engine.dispose()
    result = {"ledger": safe_url(url), "before": before, "revision": after, "changed": before != after}
    if _json(ctx, as_json):
        print_json(result)
    elif before == after:
        console.print(f"ledger {result['ledger']}: already at revision {after}")
    else:
        console.print(f"ledger {result['ledger']}: upgraded from {before or '(empty)'} to revision {after}")


@db_app.command("current")
def db_current(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Print the ledger's schema revision (without changing anything)."""
    from ..ledger.db import open_engine
    from ..ledger.migrations import HEAD, current_revision
    from ..settings import load_settings

    url = load_settings().ledger_url
    engine = open_engine(url)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    if _json(ctx, as_json):
        print_json({"ledger": safe_url(url), "revision": revision, "head": HEAD})
    else:
        state = "up to date" if revision == HEAD else f"newest is {HEAD}: run `exo-celery db upgrade`"
        console.print(f"ledger {safe_url(url)}: revision {revision or '(empty)'} ({state})")


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors print one line and exit non-zero, without a traceback (with --json: JSON on stdout)."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in (args[: args.index("--")] if "--" in args else args)
    json_errors(as_json)
    try:
        code = app(args=args, prog_name="exo-celery", standalone_mode=False)
    except typer.Abort:
        report_error("interrupted", "Interrupted")
        code = 130
    except KeyboardInterrupt:
        code = 130
    except typer.TyperException as exc:  # bad arguments (typer's vendored click exceptions)
        code = getattr(exc, "exit_code", 2)
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            sys.stdout.write(context.get_help() + "\n")  # a bare `exo-celery` (or `exo-celery db`) shows help
            code = 0
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            report_error(one_line(message) + hint, "UsageError")
    except (ExoError, TimeoutError) as exc:
        report_error(error_text(exc), type(exc).__name__)
        code = 1
    except Exception as exc:  # e.g. a server that cannot be reached: one line, not a traceback
        report_error(f"{type(exc).__name__}: {error_text(exc)[:500]}", type(exc).__name__)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
