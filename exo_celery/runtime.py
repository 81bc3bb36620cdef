"""`Runtime`: register a namespace's nodes and run a Celery worker on its queue (blocks, like Exosphere's)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import worker_init

from .celery_app import make_app, queue_name
from .errors import ConfigError
from .ledger.db import forget_engines, size_worker_pools
from .ledger.repo import Repo
from .node import is_node_class, node_schema
from .settings import Settings, load_settings
from .tasks import Worker, executions_per_process, pool_name, pool_problem, register_node_tasks
from .validate import name_problem

DEFAULT_WORKERS = 4  # Exosphere's Runtime(workers=4)
DEFAULT_POOL = "threads"  # async nodes share one loop per process; sync nodes run in the pool's threads


class Runtime:
    """Serve `nodes` for `namespace`: `start()` registers them and consumes `<prefix>.<namespace>`.

    `workers=N` (or `concurrency=N`; default 4) is N node executions at once, on Celery's `threads` pool by
    default: one process, async nodes sharing its one event loop. `pool="prefork"` suits CPU-bound sync
    nodes; gevent and eventlet are refused (docs/execution.md).
    `runtime.app` is a plain Celery app, so `celery -A module:runtime.app worker -Q exo.<ns>` works too.
    Exosphere-only arguments (`state_manager_uri`, `key`, ...) are accepted and ignored.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        nodes: Iterable[type],
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        loglevel: str = "INFO",
        settings: Settings | None = None,
        **_exosphere_options: Any,
    ) -> None:
        if (problem := name_problem("namespace", namespace)) is not None:
            raise ConfigError(problem)
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
        # Exosphere's Runtime(workers=N): N node executions at once, by default N threads of one process
        # sharing one asyncio loop for async nodes (not N processes).
        self.concurrency: int = concurrency or _exosphere_options.get("workers") or DEFAULT_WORKERS
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
        worker_init.connect(self._on_worker_init, weak=False)

    @property
    def queue(self) -> str:
        return queue_name(self.settings, self.namespace)

    def register(self) -> None:
        """Record the nodes' schemas in the ledger so graphs using them validate."""
        schemas = {name: node_schema(cls) for name, cls in self.nodes.items()}
        Repo(self.settings.ledger_url).register_nodes(self.namespace, schemas, self.name)

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        # Also reached by `celery -A ... worker -P X -c N`, which bypasses the checks of __init__.
        if (problem := pool_problem(sender.pool_cls)) is not None:
            logging.getLogger("exo_celery.worker").error("%s", problem)
            raise SystemExit(f"exo_celery: {problem}")
        concurrency = sender.concurrency if isinstance(sender.concurrency, int) else self.concurrency
        size_worker_pools(executions_per_process(sender.pool_cls, concurrency))
        self.register()
        forget_engines()  # a prefork parent executes nothing: its registration connection is not kept

    def worker_argv(self) -> list[str]:
        """The `celery worker` arguments `start()` uses."""
        argv = ["worker", "-Q", self.queue, "-n", f"{self.name}@%h", f"--loglevel={self.loglevel}", "-E"]
        return [*argv, "-c", str(self.concurrency), "-P", self.pool]

    def start(self) -> None:
        """Run the worker until it is stopped (blocks); it registers the nodes as it starts."""
        logging.getLogger("exo_celery").setLevel(self.loglevel.upper())
        self.app.worker_main(self.worker_argv())
