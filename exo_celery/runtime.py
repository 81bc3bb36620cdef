"""`Runtime`: register a namespace's nodes and run a Celery worker on their queues (blocks, like Exosphere's)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

from .celery_app import make_app, namespace_queue_prefix, node_of_queue, queue_name
from .errors import ConfigError
from .ledger.repo import Repo
from .ledger.runtimes import Runtimes
from .node import is_node_class, node_schema
from .presence import Presence
from .settings import Settings, load_settings
from .tasks import Worker, register_node_tasks
from .validate import name_problem


class Runtime:
    """Serve `nodes` for `namespace`: `start()` registers them and consumes their queues `<prefix>.<namespace>.<Node>`.

    `runtime.app` is a plain Celery app, so `celery -A module:runtime.app worker` works too (its queues
    are the nodes' queues; `-Q exo.<ns>.<Node>,...` picks some of them).
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
        # exospherehost's Runtime(workers=N) maps to the worker's process count.
        self.concurrency = concurrency or _exosphere_options.get("workers")
        self.pool = pool
        self.loglevel = loglevel
        self.app: Celery = make_app(self.settings, main=f"exo_celery.{namespace}")
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

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self._check_queues(sender.app.amqp.queues)
            self.register()

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
        if self.concurrency:
            argv += ["-c", str(self.concurrency)]
        if self.pool:
            argv += ["-P", self.pool]
        return argv

    def start(self) -> None:
        """Register the nodes and run the worker until it is stopped (blocks)."""
        logging.getLogger("exo_celery").setLevel(self.loglevel.upper())
        self.register()
        self.app.worker_main(self.worker_argv())
