"""The Celery app of an exo_celery worker: `celery -A exo_celery.worker_app worker`.

Configured from the environment (see config/README.md):

    EXO_NAMESPACE      namespace whose states the worker serves (default: "default")
    EXO_NODES          comma-separated node specs: "package.module" (every node class in it)
                       or "package.module:ATTR" (a class or a list of classes)
    EXO_WORKER_NAME    runtime name recorded with the registered nodes (default: "worker")
    EXO_DATABASE_URL, EXO_BROKER_URL, EXO_SECRETS_KEY, EXO_QUEUE_PREFIX, ...   as for every exo_celery process

Importing it builds a `Runtime` for those nodes. When the worker starts, it registers the nodes'
schemas in the ledger (so graphs using them validate), then consumes the queues that
`Runtime.start()` would consume: they are the app's `task_queues`, so `-Q` may be left out (give it
to consume fewer). The library never imports this module: it is an entry point only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from celery import Celery

from .errors import ConfigError
from .loading import load_nodes, split_specs
from .runtime import Runtime


def runtime_from_env(environ: Mapping[str, str] = os.environ) -> Runtime:
    """The `Runtime` that EXO_NAMESPACE, EXO_NODES and EXO_WORKER_NAME describe."""
    specs = split_specs(environ.get("EXO_NODES", ""))
    if not specs:
        raise ConfigError("EXO_NODES is empty: name the node module(s) to serve, e.g. EXO_NODES=my_nodes:NODES")
    nodes = [node for spec in specs for node in load_nodes(spec)]
    return Runtime(environ.get("EXO_NAMESPACE") or "default", environ.get("EXO_WORKER_NAME") or "worker", nodes)


def consumed_queues(runtime: Runtime) -> list[str]:
    """The queues `runtime.start()` consumes: the `-Q` of its `worker_argv()`, so both never disagree."""
    argv = runtime.worker_argv()
    if "-Q" not in argv:
        return [runtime.queue]
    return [name for name in argv[argv.index("-Q") + 1].split(",") if name]


def consume(app: Celery, queues: list[str]) -> None:
    """Make `queues` the app's task_queues (declared as `-Q` would declare them) and the first its default."""
    declare = app.amqp.Queues(()).new_missing  # not `app.amqp.queues`: it is cached on first use
    app.conf.task_default_queue = queues[0]
    app.conf.task_queues = [declare(name) for name in queues]


if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # node modules next to the working directory, as with `celery -A`

runtime = runtime_from_env()
app: Celery = runtime.app
consume(app, consumed_queues(runtime))
