"""The Celery app of an exo_celery worker, for `celery -A worker.app worker [-Q exo.<namespace>.<Node>,...]`.

Configured from the environment (see config/README.md):

    EXO_NAMESPACE      namespace whose nodes the worker serves (default: "default")
    EXO_NODES          comma-separated node specs: "package.module" (every node class in it)
                       or "package.module:ATTR" (a class or a list of classes)
    EXO_WORKER_NAME    runtime name recorded with the registered nodes (default: "worker")
    EXO_DATABASE_URL, EXO_BROKER_URL, EXO_SECRETS_KEY, ...   as for every exo_celery process

When the worker starts, it registers the nodes' schemas in the ledger (so graphs using them
validate), then consumes one queue per node, `<EXO_QUEUE_PREFIX>.<EXO_NAMESPACE>.<NodeName>`; those
are the app's queues, so `-Q` may be left out (or pick some of them: the worker then serves only
those nodes). This module is an entry point only: the library never imports it.
"""

from __future__ import annotations

import os
import sys

from exo_celery import Runtime
from exo_celery.cli import load_nodes
from exo_celery.errors import ConfigError

sys.path.insert(0, os.getcwd())  # node modules next to the working directory, as with `celery -A`

namespace = os.environ.get("EXO_NAMESPACE") or "default"
specs = [s.strip() for s in os.environ.get("EXO_NODES", "").split(",") if s.strip()]
if not specs:
    raise ConfigError("EXO_NODES is empty: name the node module(s) to serve, e.g. EXO_NODES=my_nodes:NODES")

runtime = Runtime(namespace, os.environ.get("EXO_WORKER_NAME") or "worker", [n for s in specs for n in load_nodes(s)])
app = runtime.app
