"""A runtime's presence in the ledger: registered when it starts consuming, a heartbeat while it runs,
marked stopped when it shuts down. A killed runtime simply stops beating and goes stale.

No Celery here: `runtime.py` starts and stops it from the worker's signals (in the worker's main
process, which lives as long as the worker does, whatever its pool).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from .engine import new_id
from .ledger.runtimes import Runtimes

log = logging.getLogger("exo_celery.runtime")


class Presence:
    """Registers one runtime and keeps its heartbeat fresh from a daemon thread."""

    def __init__(self, runtimes: Runtimes, namespace: str, name: str, nodes: list[str]) -> None:
        self.runtimes = runtimes
        self.namespace = namespace
        self.name = name
        self.nodes = sorted(nodes)
        self.id = new_id()
        self.period = max(0.5, runtimes.stale_after / 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register now (so waiting states show a live runtime at once) and keep beating in the background."""
        if self._thread is not None:
            return
        registered = self._register()
        self._thread = threading.Thread(target=self._run, args=(registered,), name="exo-presence", daemon=True)
        self._thread.start()

    def _register(self) -> bool:
        try:
            self.runtimes.register(self.id, self.namespace, self.name, self.nodes, socket.gethostname(), os.getpid())
        except Exception as exc:
            log.warning("could not register runtime %s in the ledger (%s); will retry", self.name, type(exc).__name__)
            return False
        log.info("runtime %s (%s) serves %s in namespace %s", self.name, self.id, ", ".join(self.nodes), self.namespace)
        return True

    def _run(self, registered: bool) -> None:
        while not self._stop.wait(self.period):
            try:
                registered = self.runtimes.heartbeat(self.id) if registered else self._register()
                if not registered:
                    registered = self._register()  # purged or marked stopped while this runtime was unreachable
            except Exception as exc:
                log.warning("runtime heartbeat failed (%s); will retry", type(exc).__name__)

    def stop(self) -> None:
        """A clean shutdown: the runtime is not live any more, at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self.runtimes.stop(self.id)
        except Exception as exc:
            log.warning("could not mark runtime %s stopped (%s): it goes stale instead", self.name, type(exc).__name__)
