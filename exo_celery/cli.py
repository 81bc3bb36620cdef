"""The `exo-celery` command line."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import typer
from rich.console import Console

from .errors import ConfigError, ExoError
from .node import is_node_class

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run Exosphere-style graphs on Celery.",
)
console = Console()
err_console = Console(stderr=True)


def load_nodes(spec: str) -> list[type]:
    """Node classes from 'module' (every node class in it) or 'module:attr' (a class or a list of them)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import node module {module_name!r}: {exc}") from exc
    if attr:
        if not hasattr(module, attr):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
        found = getattr(module, attr)
        items = list(found) if isinstance(found, (list, tuple)) else [found]
    else:
        items = [v for v in vars(module).values() if is_node_class(v) and v.__module__ == module.__name__]
    nodes = [n for n in items if is_node_class(n)]
    if not nodes:
        raise ConfigError(f"no node classes found in {spec!r}")
    return nodes


def fail(message: str) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


@app.command()
def worker(
    namespace: str = typer.Option(..., "--namespace", "-n", help="namespace whose queue to consume"),
    nodes: list[str] = typer.Option(..., "--nodes", help="module or module:attr holding node classes"),
    name: str = typer.Option("worker", help="runtime name (the Celery node name prefix)"),
    concurrency: int = typer.Option(0, "--concurrency", "-c", help="worker processes (0: Celery's default)"),
    pool: str = typer.Option("", "--pool", "-P", help="Celery pool (prefork, threads, solo)"),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Run a Celery worker serving NODES on the queue of NAMESPACE."""
    from .runtime import Runtime

    sys.path.insert(0, os.getcwd())
    classes = [cls for spec in nodes for cls in load_nodes(spec)]
    Runtime(namespace, name, classes, concurrency=concurrency or None, pool=pool or None, loglevel=loglevel).start()


@app.command()
def beat(loglevel: str = typer.Option("INFO", "--loglevel", "-l")) -> None:
    """Run the beat process: due states, recovery sweep, cron triggers, retention."""
    import logging

    from .beat import Beat

    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    Beat().run_forever()


@app.command()
def demo(timeout: float = typer.Option(120.0, help="seconds to wait for the run")) -> None:
    """Start a worker, run a fan-out + unite graph on it, print the outputs, and stop."""
    import asyncio

    from . import demo as demo_graph
    from .client import StateManager
    from .settings import load_settings

    settings = load_settings()
    log_path = settings.home_dir / "demo-worker.log"
    started = time.monotonic()
    console.print(f"ledger: {settings.ledger_url.split('@')[-1]}  broker: {settings.broker.split('@')[-1]}")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exo_celery.cli",
                "worker",
                "--namespace",
                demo_graph.NAMESPACE,
                "--nodes",
                "exo_celery.demo:NODES",
                "--name",
                "demo",
                "--concurrency",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        manager = StateManager(demo_graph.NAMESPACE, settings=settings, validation_timeout=60)

        async def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            await manager.upsert_graph(demo_graph.GRAPH, demo_graph.GRAPH_NODES, secrets={})
            created = await manager.trigger(demo_graph.GRAPH)
            console.print(f"triggered run {created['run_id']}")
            finished = await manager.wait(created["run_id"], timeout=timeout)
            return finished, await manager.list_states(created["run_id"])

        finished, states = asyncio.run(run())
        for s in states:
            console.print(
                f"  {s['identifier']:<8} {s['status']:<8} inputs={s['inputs']} outputs={s['outputs']}", highlight=False
            )
        console.print(
            f"run {finished['run_id']}: [bold]{finished['status']}[/bold] "
            f"in {time.monotonic() - started:.1f} s (worker log: {log_path})"
        )
        if finished["status"] != "SUCCESS":
            raise typer.Exit(1)
    except ExoError as exc:
        fail(str(exc))
    except TimeoutError as exc:
        fail(f"{exc} (worker log: {log_path})")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # the run is over: a cold shutdown loses nothing
            proc.wait(timeout=10)


def main() -> None:
    """Entry point: errors print one line and exit non-zero, without a traceback."""
    try:
        app()
    except ExoError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
