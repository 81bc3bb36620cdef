"""The Celery task behind every node: claim the state, run the node, record the outcome, publish children."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import InterfaceError, OperationalError

from .celery_app import declared_queue, publish, queue_name, task_name
from .crypto import decrypt_secrets, redact
from .engine import CompiledGraph, new_id
from .execute import run_node
from .ledger.repo import Repo
from .ledger.runtimes import Runtimes
from .ledger.transitions import MAX_DELIVERIES, Completion, Outcome, Transitions, dispatch_of
from .settings import Settings

log = logging.getLogger("exo_celery.worker")


class Heartbeat:
    """Renews the leases of the states this process is executing, however long they run."""

    def __init__(self, transitions: Transitions, period: float) -> None:
        self.transitions = transitions
        self.period = period
        self.tokens: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def track(self, token: str) -> None:
        with self._lock:
            self.tokens.add(token)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="exo-lease", daemon=True)
                self._thread.start()

    def untrack(self, token: str) -> None:
        with self._lock:
            self.tokens.discard(token)

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            with self._lock:
                tokens = list(self.tokens)
            try:
                self.transitions.renew_leases(tokens)
            except Exception:
                log.warning("could not renew %d lease(s); will retry", len(tokens))


class Worker:
    """What one worker process needs to execute states of its nodes."""

    def __init__(self, app: Celery, settings: Settings, nodes: dict[str, type], namespace: str | None = None) -> None:
        self.app = app
        self.settings = settings
        self.namespace = namespace
        self.nodes = nodes
        self.repo = Repo(settings.ledger_url)
        self.transitions = Transitions(settings.ledger_url, settings.lease_seconds, settings.max_countdown, worker=True)
        self.heartbeat = Heartbeat(self.transitions, max(0.5, settings.lease_seconds / 3))
        self.runtimes = Runtimes(settings.ledger_url, settings.lease_seconds)
        self._graphs: dict[tuple[str, str, int], tuple[CompiledGraph, dict[str, str]]] = {}

    def graph(self, namespace: str, name: str, version: int) -> tuple[CompiledGraph, dict[str, str]]:
        """A compiled template version and its secrets (versions never change, so they are cached)."""
        key = (namespace, name, version)
        cached = self._graphs.get(key)
        if cached is None:
            row = self.repo.load_graph(namespace, name, version)
            if row is None:
                raise LookupError(f"graph {name!r} version {version} is missing from the ledger")
            graph = CompiledGraph.from_row(row)
            cached = (graph, decrypt_secrets(graph.secrets_cipher, self.settings.fernet_key()))
            self._graphs[key] = cached
        return cached

    def _record(self, graph: CompiledGraph, row: dict[str, Any], token: str, outcome: Outcome) -> Completion:
        """Complete the state; if its outcome cannot be stored (not an outage), record it as ERRORED instead
        of letting the lease expire and the state run again for ever."""
        try:
            done: Completion = _with_db_retry(lambda: self.transitions.complete(graph, row, token, outcome))
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            log.error("state %s: outcome could not be recorded (%s); marking it ERRORED", row["id"], type(exc).__name__)
            fallback = _unrecordable(exc)
            done = _with_db_retry(lambda: self.transitions.complete(graph, row, token, fallback))
        return done

    def _hand_back(self, row: dict[str, Any], token: str) -> None:
        """A message for a node this worker does not serve (sent by hand, or left on an old queue): give the
        claim back without spending an attempt or a retry, and send the state to its node's own queue."""
        queue = queue_name(self.settings, row["namespace"], row["node_name"])
        if _with_db_retry(lambda: self.runtimes.hand_back(row["id"], token)):
            node = row["node_name"]
            log.warning("state %s: node %s is not served by this worker; sent to its queue %s", row["id"], node, queue)
            publish(self.app, self.settings, [dispatch_of(row)])

    def run_state(self, state_id: str, run_id: str) -> None:
        """Execute one state; every step is safe to repeat for the same message."""
        token = new_id()
        verdict, row = _with_db_retry(lambda: self.transitions.claim(state_id, token, self.namespace))
        if verdict == "skip" or row is None:
            log.debug("state %s: nothing to do (finished, cancelled or running elsewhere)", state_id)
            return
        if verdict == "early":
            publish(self.app, self.settings, [dispatch_of(row)])
            return
        node_cls = self.nodes.get(row["node_name"])
        if node_cls is None:
            self._hand_back(row, token)
            return
        graph, secrets = self.graph(row["graph_namespace"], row["graph_name"], row["graph_version"])
        _log_transition(row, "RUNNING")
        self.heartbeat.track(token)
        try:
            if row["attempts"] > MAX_DELIVERIES:
                outcome = Outcome(
                    "error",
                    retryable=False,
                    error=f"gave up after {MAX_DELIVERIES} deliveries: the worker died or was lost each time",
                )
            else:
                outcome = run_node(
                    node_cls,
                    row["inputs"],
                    secrets,
                    lambda: self.repo.read_store(row["run_id"]),
                    self.settings.max_output_bytes,
                )
            done = self._record(graph, row, token, outcome)
        finally:
            self.heartbeat.untrack(token)
        if done.status is None:
            log.info("state %s: already recorded by another delivery; nothing changed", state_id)
            return
        # Error texts may quote inputs as well as secrets: neither reaches the log.
        hidden = [*secrets.values(), *(str(v) for v in row["inputs"].values() if len(str(v)) >= 3)]
        _log_transition(row, done.status, redact(outcome.error, hidden) if outcome.error else None)
        for new_id_, identifier, status in done.created:
            _log_transition({**row, "id": new_id_, "identifier": identifier}, status)
        publish(self.app, self.settings, done.dispatches)


def _unrecordable(exc: Exception) -> Outcome:
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300] if str(exc) else ""
    return Outcome("error", retryable=False, error=f"the outcome could not be recorded: {type(exc).__name__}: {detail}")


def _log_transition(row: dict[str, Any], status: str, error: str | None = None) -> None:
    log.info(
        "run=%s state=%s graph=%s identifier=%s status=%s%s",
        row["run_id"],
        row["id"],
        row["graph_name"],
        row["identifier"],
        status,
        f" error={error[:300]!r}" if error else "",
    )


def _with_db_retry(call: Any, attempts: int = 30) -> Any:
    """Retry a ledger call while the database is unreachable (a restart), up to about a minute."""
    for attempt in range(attempts):
        try:
            return call()
        except (OperationalError, InterfaceError) as exc:
            if attempt == attempts - 1:
                raise
            log.warning("ledger unavailable (%s); retrying", type(exc.orig).__name__)
            time.sleep(min(2.0, 0.1 * 2**attempt))
    return None


def register_node_tasks(app: Celery, settings: Settings, namespace: str, nodes: dict[str, type]) -> Worker:
    """Register one task per node class, named `<prefix>.<namespace>.<NodeName>`, and its queue (same name).

    The nodes' queues become the app's queues, so a `celery -A ... worker` without `-Q` consumes
    exactly them (and never the `<prefix>.default` queue).
    """
    worker = Worker(app, settings, nodes, namespace)
    queues = []
    for node_name in nodes:
        name = task_name(settings, namespace, node_name)
        queue = queue_name(settings, namespace, node_name)
        queues.append(declared_queue(queue))

        def run(self: Task, state_id: str, run_id: str) -> None:
            worker.run_state(state_id, run_id)

        app.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, queue=queue)(run)
    app.conf.task_queues = queues
    return worker
