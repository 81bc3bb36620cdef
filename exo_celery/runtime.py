"""`Runtime`: register a namespace's nodes and run a Celery worker on its queue (blocks, like Exosphere's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import worker_init

from .celery_app import make_app, queue_name
from .errors import ConfigError
from .ledger.repo import Repo
from .node import is_node_class, node_schema
from .settings import Settings, load_settings
from .tasks import Worker, register_node_tasks
from .validate import name_problem


class Runtime:
    """Serve `nodes` for `namespace`: `start()` registers them and consumes `<prefix>.<namespace>`.

    `runtime.app` is a plain Celery app, so `celery -A module:runtime.app worker -Q exo.<ns>` works too.
    The positional arguments are the SDK's; `state_manager_uri`, `key`, `batch_size`,
    `state_manage_version` and `poll_interval` are accepted and unused (states arrive as Celery
    messages, not by polling a state manager). Ours are keyword-only.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        nodes: Iterable[type],
        state_manager_uri: str | None = None,
        key: str | None = None,
        batch_size: int = 16,
        workers: int = 4,
        state_manage_version: str = "v0",
        poll_interval: int = 1,
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        loglevel: str = "INFO",
        settings: Settings | None = None,
    ) -> None:
        if (problem := name_problem("namespace", namespace)) is not None:
            raise ConfigError(problem)
        for label, value in (("batch_size", batch_size), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Runtime {label} must be a whole number >= 1, got {value!r}")
        node_list = list(nodes)
        bad = [repr(n) for n in node_list if not is_node_class(n)]
        if bad:
            raise ConfigError(
                f"not node classes (need nested Inputs, Outputs, Secrets models and execute): {', '.join(bad)}"
            )
        if not node_list:
            raise ConfigError("Runtime needs at least one node class")
        self.namespace = namespace
        self.name = name
        self.nodes: dict[str, type] = {n.__name__: n for n in node_list}
        self.settings = settings or load_settings(database_url=database_url, broker_url=broker_url)
        self.state_manager_uri = state_manager_uri
        self.key = key
        self.batch_size = batch_size
        self.state_manage_version = state_manage_version
        self.poll_interval = poll_interval
        self.workers = workers
        # exospherehost's Runtime(workers=N) maps to the worker's process count.
        self.concurrency = concurrency or workers
        self.pool = pool
        self.loglevel = loglevel
        self.app: Celery = make_app(self.settings, main=f"exo_celery.{namespace}")
        self.worker: Worker = register_node_tasks(self.app, self.settings, namespace, self.nodes)
        worker_init.connect(self._on_worker_init, weak=False)

    @property
    def queue(self) -> str:
        return queue_name(self.settings, self.namespace)

    def register(self) -> None:
        """Record the nodes' schemas in the ledger so graphs using them validate."""
        schemas = {name: node_schema(cls) for name, cls in self.nodes.items()}
        Repo(self.settings.ledger_url).register_nodes(self.namespace, schemas, self.name)

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self.register()

    def worker_argv(self) -> list[str]:
        """The `celery worker` arguments `start()` uses."""
        argv = ["worker", "-Q", self.queue, "-n", f"{self.name}@%h", f"--loglevel={self.loglevel}", "-E"]
        if self.concurrency:
            argv += ["-c", str(self.concurrency)]
        if self.pool:
            argv += ["-P", self.pool]
        return argv

    def _run(self) -> None:
        """Register the nodes and run the worker in this process until it is stopped."""
        logging.getLogger("exo_celery").setLevel(self.loglevel.upper())
        self.register()
        self.app.worker_main(self.worker_argv())

    def start(self) -> asyncio.Task[None] | None:
        """Run the worker: blocks until it stops, or, inside a running event loop, returns a task.

        As exospherehost's `start()`: called from a running loop (a notebook, an async app) it
        returns `asyncio.Task` of `_start()`; cancelling the task stops the worker. Called from a
        thread other than the main one, it blocks that thread while the worker runs in a child
        process (see `_start`).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if threading.current_thread() is threading.main_thread():
                self._run()
            else:  # a background thread (getting started's pattern): the worker needs a main thread
                asyncio.run(self._start())
            return None
        return loop.create_task(self._start())

    async def _start(self) -> None:
        """The coroutine form: registers the nodes, then runs the worker until it stops or this is cancelled.

        A Celery worker needs a process's main thread (signal handlers, its pool), so it runs in a
        forked child process that leads its own process group; it stops by itself when its parent
        goes away. Raises RuntimeError if the worker exits with an error.
        """
        await asyncio.to_thread(self.register)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            _child_main(self, parent)
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            await _stop_child(pid)
            raise
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"the worker of runtime {self.name!r} exited with code {code}")


def _child_main(runtime: Runtime, parent: int) -> None:
    """Body of `_start()`'s worker process; exits the process when the worker stops."""
    code = 1
    try:
        os.setpgrp()  # its pool's processes join this group: stopping it reaches them all
        signal.set_wakeup_fd(-1)  # the parent's event loop is not this process's

        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(1.0)
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown

        threading.Thread(target=watch, name="exo-parent-watch", daemon=True).start()
        runtime._run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        logging.getLogger("exo_celery").exception("runtime %r failed", runtime.name)
    finally:
        os._exit(code)


async def _stop_child(pid: int, grace: float = 10.0) -> None:
    """Warm-shut the worker (SIGTERM), then kill its process group if it lingers past `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(int(grace / 0.1)):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    await asyncio.to_thread(os.waitpid, pid, 0)
