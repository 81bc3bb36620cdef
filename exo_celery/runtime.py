"""`Runtime`: register a namespace's nodes and run a Celery worker on their queues (blocks, like Exosphere's)."""

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
from celery.signals import worker_init, worker_ready, worker_shutdown

from .celery_app import make_app, namespace_queue_prefix, node_of_queue, queue_name
from .errors import ConfigError, WorkerExited
from .ledger.db import forget_engines, size_worker_pools
from .ledger.meta import check_secrets_key
from .ledger.repo import Repo
from .ledger.runtimes import Runtimes
from .node import is_node_class, node_schema
from .presence import Presence
from .settings import Settings, load_settings
from .tasks import Worker, executions_per_process, pool_name, pool_problem, register_node_tasks
from .validate import name_problem

DEFAULT_WORKERS = 4  # Exosphere's Runtime(workers=4)
DEFAULT_POOL = "threads"  # async nodes share one loop per process; sync nodes run in the pool's threads


class Runtime:
    """Serve `nodes` for `namespace`: `start()` registers them and consumes their queues `<prefix>.<namespace>.<Node>`.

    `workers=N` (or `concurrency=N`; default 4) is N node executions at once, on Celery's `threads` pool by
    default: one process, async nodes sharing its one event loop. `pool="prefork"` suits CPU-bound sync
    nodes; gevent and eventlet are refused (docs/execution.md).
    `runtime.app` is a plain Celery app, so `celery -A module:runtime.app worker` works too (its queues
    are the nodes' queues; `-Q exo.<ns>.<Node>,...` picks some of them).
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
        named = [p for n in node_list if (p := name_problem("node class name", n.__name__)) is not None]
        if named:  # node names are parts of task and queue names, as namespaces are
            raise ConfigError("; ".join(named))
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
        # Exosphere's Runtime(workers=N): N node executions at once, by default N threads of one process
        # sharing one asyncio loop for async nodes (not N processes).
        self.concurrency: int = concurrency or workers or DEFAULT_WORKERS
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"workers/concurrency must be a positive integer, got {self.concurrency!r}")
        self.pool: str = pool_name(pool or DEFAULT_POOL)
        if (problem := pool_problem(self.pool)) is not None:
            raise ConfigError(problem)
        self.loglevel = loglevel
        self.app: Celery = make_app(self.settings, main=f"exo_celery.{namespace}")
        # `celery -A ... worker` without -P/-c gets the same defaults as start().
        self.app.conf.worker_pool = self.pool
        self.app.conf.worker_concurrency = self.concurrency
        self.worker: Worker = register_node_tasks(self.app, self.settings, namespace, self.nodes)
        self.presence: Presence | None = None
        worker_init.connect(self._on_worker_init, weak=False)
        worker_ready.connect(self._on_worker_ready, weak=False)
        worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    @property
    def queues(self) -> list[str]:
        """The queues of this runtime's nodes, `<prefix>.<namespace>.<NodeName>` each."""
        return [queue_name(self.settings, self.namespace, node) for node in self.nodes]

    @property
    def queue(self) -> str:
        """The `-Q` value: the nodes' queues, comma-separated."""
        return ",".join(self.queues)

    def register(self) -> None:
        """Record the nodes' schemas in the ledger so graphs using them validate."""
        schemas = {name: node_schema(cls) for name, cls in self.nodes.items()}
        Repo(self.settings.ledger_url).register_nodes(self.namespace, schemas, self.name)

    def check_secrets_key(self) -> None:
        """Refuse to serve with a secrets key other than the ledger's (ConfigError): its states could not run."""
        check_secrets_key(self.settings.ledger_url, self.settings.fernet_key())

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        # Also reached by `celery -A ... worker -P X -c N`, which bypasses the checks of __init__.
        if (problem := pool_problem(sender.pool_cls)) is not None:
            logging.getLogger("exo_celery.worker").error("%s", problem)
            raise SystemExit(f"exo_celery: {problem}")
        try:
            self.check_secrets_key()
        except ConfigError as exc:  # `celery -A ... worker`: a signal handler's exception would be ignored
            logging.getLogger("exo_celery.worker").critical("%s", exc)
            raise SystemExit(f"error: {exc}") from None
        self._check_queues(sender.app.amqp.queues)
        concurrency = sender.concurrency if isinstance(sender.concurrency, int) else self.concurrency
        size_worker_pools(executions_per_process(sender.pool_cls, concurrency))
        self.register()
        forget_engines()  # a prefork parent executes nothing: its registration connection is not kept

    def _check_queues(self, queues: Any) -> None:
        """Drop, with a clear log line, consumed queues of this namespace whose node this worker does not
        serve (a `-Q` typo or the pre-routing `<prefix>.<namespace>` queue): their messages would be
        discarded as unregistered tasks. They stay in their queue for a runtime that serves the node."""
        log = logging.getLogger("exo_celery.runtime")
        legacy = namespace_queue_prefix(self.settings, self.namespace).rstrip(".")
        for name in list(queues.consume_from):
            node = node_of_queue(self.settings, self.namespace, name)
            if name == legacy:
                log.error(
                    "not consuming %s: states go to one queue per node now (%s<NodeName>); "
                    "beat re-sends what was left on it",
                    name,
                    legacy + ".",
                )
                queues.deselect([name])
            elif node is not None and node not in self.nodes:
                log.error(
                    "not consuming %s: node %s is not served by this worker (it serves %s); its states wait "
                    "for a runtime that serves it",
                    name,
                    node,
                    ", ".join(self.nodes),
                )
                queues.deselect([name])

    def consumed_nodes(self) -> list[str]:
        """The nodes whose queues the started worker consumes (all of them unless `-Q` picked some)."""
        names = set(self.app.amqp.queues.consume_from)
        return [node for node in self.nodes if queue_name(self.settings, self.namespace, node) in names]

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app and self.presence is None:
            runtimes = Runtimes(self.settings.ledger_url, self.settings.lease_seconds)
            self.presence = Presence(runtimes, self.namespace, self.name, self.consumed_nodes())
            self.presence.start()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app and self.presence is not None:
            self.presence.stop()
            self.presence = None

    def worker_argv(self) -> list[str]:
        """The `celery worker` arguments `start()` uses."""
        argv = ["worker", "-Q", self.queue, "-n", f"{self.name}@%h", f"--loglevel={self.loglevel}", "-E"]
        return [*argv, "-c", str(self.concurrency), "-P", self.pool]

    def _run(self) -> None:
        """Run the worker in this process until it is stopped; it registers the nodes as it starts."""
        logging.getLogger("exo_celery").setLevel(self.loglevel.upper())
        self.check_secrets_key()
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
        goes away. Raises WorkerExited (a RuntimeError) if the worker exits with an error.
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
            raise WorkerExited(f"the worker of runtime {self.name!r} exited with code {code}")


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
