"""The Celery task behind every node: claim the state, run the node, record the outcome, publish children."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry

from . import log_redaction
from .celery_app import declared_queue, publish, queue_name, task_name
from .crypto import decrypt_secrets, redact
from .engine import CompiledGraph, new_id
from .errors import ConfigError, NotFoundError, StateErrored
from .execute import Execution, run_node
from .ledger.db import UNREACHABLE
from .ledger.repo import Repo
from .ledger.runtimes import Runtimes
from .ledger.transitions import Transitions
from .log_redaction import hide_in_logs
from .outcomes import Completion, Outcome, StateRow, dispatch_of
from .plan import MAX_DELIVERIES
from .poison import task_args_problem
from .settings import Settings
from .status import FAILED_STATES

log = logging.getLogger("exo_celery.worker")


CANCEL_CHECK_SECONDS = 1.0  # how soon an executing state's cancel stops its node


class Heartbeat:
    """Renews the leases of the states this process is executing, however long they run, and stops an
    execution whose lease is gone (its run was cancelled, or its state was taken over) within about a second."""

    def __init__(self, transitions: Transitions, period: float, check_period: float = CANCEL_CHECK_SECONDS) -> None:
        self.transitions = transitions
        self.period = period
        self.check_period = min(check_period, period)
        self.running: dict[str, tuple[str, Execution]] = {}  # state id -> (lease token, execution)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def track(self, state_id: str, token: str, execution: Execution) -> None:
        with self._lock:
            self.running[state_id] = (token, execution)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="exo-lease", daemon=True)
                self._thread.start()

    def untrack(self, state_id: str) -> None:
        with self._lock:
            self.running.pop(state_id, None)

    def _run(self) -> None:
        last_renewal = time.monotonic()
        while True:
            time.sleep(self.check_period)
            with self._lock:
                running = dict(self.running)
            if not running:
                continue
            leases = {sid: token for sid, (token, _) in running.items()}
            try:
                if time.monotonic() - last_renewal >= self.period:
                    self.transitions.renew_leases(leases)
                    last_renewal = time.monotonic()
                for sid in self.transitions.lost_leases(leases):
                    running[sid][1].cancel()
            except Exception:
                log.warning("could not renew or check %d lease(s); will retry", len(leases))


class Worker:
    """What one worker process needs to execute states of its nodes."""

    def __init__(self, app: Celery, settings: Settings, nodes: dict[str, type], namespace: str | None = None) -> None:
        self.app = app
        self.settings = settings
        self.namespace = namespace
        self.nodes = nodes
        self.repo = Repo(settings.ledger_url, worker=True)
        self.transitions = Transitions(
            settings.ledger_url,
            settings.lease_seconds,
            settings.max_countdown,
            worker=True,
            max_input_bytes=settings.max_input_bytes,
        )
        self.heartbeat = Heartbeat(self.transitions, max(0.5, settings.lease_seconds / 3))
        self.runtimes = Runtimes(settings.ledger_url, settings.lease_seconds)
        self._graphs: dict[tuple[str, str, int], tuple[CompiledGraph, dict[str, str] | None, str | None]] = {}

    def graph(self, namespace: str, name: str, version: int) -> tuple[CompiledGraph, dict[str, str] | None, str | None]:
        """A compiled template version, its secrets and why they cannot be read (None when they can).

        Versions never change, so they are cached. The secret values join this process's log filter, and
        the graph knows them so that nothing it renders writes them to the ledger.
        """
        key = (namespace, name, version)
        cached = self._graphs.get(key)
        if cached is None:
            row = self.repo.load_graph(namespace, name, version)
            if row is None:
                raise NotFoundError(f"graph {name!r} version {version} is missing from the ledger")
            graph = CompiledGraph.from_row(row)
            try:
                secrets = decrypt_secrets(graph.secrets_cipher, self.settings.fernet_key())
            except ConfigError as exc:
                log.error("graph %r version %d: %s", name, version, exc)
                cached = (graph, None, str(exc))
            else:
                hide_in_logs(secrets.values())
                cached = (graph.with_secrets(secrets), secrets, None)
            self._graphs[key] = cached
        return cached

    def _record(self, graph: CompiledGraph, row: StateRow, token: str, outcome: Outcome) -> Completion:
        """Complete the state; if its outcome cannot be stored (not an outage), record it as ERRORED instead
        of letting the lease expire and the state run again for ever."""
        try:
            done: Completion = _with_db_retry(lambda: self.transitions.complete(graph, row, token, outcome))
        except UNREACHABLE:
            raise
        except Exception as exc:
            log.error("state %s: outcome could not be recorded (%s); marking it ERRORED", row["id"], type(exc).__name__)
            fallback = _unrecordable(exc)
            done = _with_db_retry(lambda: self.transitions.complete(graph, row, token, fallback))
        return done

    def _hand_back(self, row: StateRow, token: str) -> None:
        """A message for a node this worker does not serve (sent by hand, or left on an old queue): give the
        claim back without spending an attempt or a retry, and send the state to its node's own queue."""
        queue = queue_name(self.settings, row["namespace"], row["node_name"])
        if _with_db_retry(lambda: self.runtimes.hand_back(row["id"], token)):
            node = row["node_name"]
            log.warning("state %s: node %s is not served by this worker; sent to its queue %s", row["id"], node, queue)
            publish(self.app, self.settings, [dispatch_of(row)])

    def run_state(self, state_id: str, run_id: str) -> dict[str, Any]:
        """Execute one state; every step is safe to repeat for the same message.

        Returns what Flower shows as the task's result (the state's new status, never values); raises
        `StateErrored` when the state ended ERRORED and Celery's `Retry` when its retry was created, so that
        Flower shows FAILURE and RETRY.
        """
        token = new_id()
        verdict, row = _with_db_retry(lambda: self.transitions.claim(state_id, token, self.namespace))
        if verdict == "skip" or row is None:
            log.debug("state %s: nothing to do (finished, cancelled or running elsewhere)", state_id)
            return {"status": "SKIPPED"}
        if verdict == "early":
            publish(self.app, self.settings, [dispatch_of(row)])
            return {"status": "EARLY"}
        node_cls = self.nodes.get(row["node_name"])
        if node_cls is None:
            self._hand_back(row, token)
            return {"status": "HANDED_BACK"}
        graph, secrets, key_problem = self.graph(row["graph_namespace"], row["graph_name"], row["graph_version"])
        _log_transition(row, "RUNNING")
        execution = Execution()
        self.heartbeat.track(state_id, token, execution)
        try:
            outcome: Outcome | None
            if secrets is None:  # a wrong EXO_SECRETS_KEY: no delivery can do better
                outcome = Outcome("error", retryable=False, error=key_problem)
            elif row["attempts"] > MAX_DELIVERIES:
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
                    execution,
                )
            if outcome is None:
                log.info("state %s: cancelled (or taken over) while executing; the node was stopped", state_id)
                return {"status": "CANCELLED"}
            done = self._record(graph, row, token, outcome)
        finally:
            self.heartbeat.untrack(state_id)
        if done.status is None:
            log.info("state %s: already recorded by another delivery; nothing changed", state_id)
            return {"status": "SKIPPED"}
        # Error texts may quote inputs as well as secrets: neither reaches the log nor Flower.
        hidden = [*(secrets or {}).values(), *(str(v) for v in row["inputs"].values() if len(str(v)) >= 3)]
        error = redact(outcome.error, hidden)[:300] if outcome.error else None
        _log_transition(row, done.status, error)
        for new in done.created:
            _log_transition({**row, "id": new.id, "identifier": new.identifier}, new.status)
        publish(self.app, self.settings, done.dispatches)
        if done.status == "ERRORED":
            raise StateErrored(error or "ERRORED")
        if done.status == "RETRY_CREATED":
            raise Retry(f"retry created: {error}", exc=StateErrored(error or "error"))
        if outcome.kind == "requeue":
            return {"status": done.status, "requeued_after": outcome.delay}
        return {"status": done.status}


def _unrecordable(exc: Exception) -> Outcome:
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300] if str(exc) else ""
    return Outcome("error", retryable=False, error=f"the outcome could not be recorded: {type(exc).__name__}: {detail}")


def _log_transition(row: Mapping[str, Any], status: str, error: str | None = None) -> None:
    log.log(
        logging.ERROR if status in FAILED_STATES else logging.INFO,
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
        except UNREACHABLE as exc:
            if attempt == attempts - 1:
                raise
            log.warning("ledger unavailable (%s); retrying", type(exc.orig).__name__)
            time.sleep(min(2.0, 0.1 * 2**attempt))
    return None


POOLS = ("threads", "prefork", "solo")  # what a worker may run on; "processes" is Celery's alias of prefork
GREEN_POOLS = ("gevent", "eventlet")


def pool_name(pool: Any) -> str:
    """A Celery pool given as an alias ("threads") or as the class `celery worker -P` resolves it to."""
    if isinstance(pool, str):
        alias = pool.strip().lower()
        return "prefork" if alias == "processes" else alias
    module = getattr(pool, "__module__", "") or ""
    if not module.startswith("celery.concurrency."):
        return f"{module}:{getattr(pool, '__qualname__', pool)}"
    last = module.rsplit(".", 1)[-1]
    return "threads" if last == "thread" else last


def pool_problem(pool: Any) -> str | None:
    """Why exo_celery cannot run on `pool`, or None when it can."""
    name = pool_name(pool)
    if name in POOLS:
        return None
    if any(green in name for green in GREEN_POOLS):
        return (
            f"the Celery pool {name!r} is not supported: exo_celery runs async nodes on one asyncio loop per "
            "process, which green threads would block; use the default `threads` pool (with --concurrency N "
            "for N executions at once) for I/O-bound and async nodes, or `prefork` for CPU-bound sync nodes"
        )
    return f"unknown Celery pool {name!r}: use one of {', '.join(POOLS)}"


def executions_per_process(pool: Any, concurrency: int) -> int:
    """How many states one process of this pool executes at once (a prefork child runs one)."""
    return 1 if pool_name(pool) in ("prefork", "solo") else max(1, concurrency)


def register_node_tasks(app: Celery, settings: Settings, namespace: str, nodes: dict[str, type]) -> Worker:
    """Register one task per node class, named `<prefix>.<namespace>.<NodeName>`, and its queue (same name).

    The nodes' queues become the app's queues, so a `celery -A ... worker` without `-Q` consumes
    exactly them (and never the `<prefix>.default` queue).
    """
    worker = Worker(app, settings, nodes, namespace)
    log_redaction.connect()  # the secrets this worker decrypts never reach its log
    queues = []
    for node_name in nodes:
        name = task_name(settings, namespace, node_name)
        queue = queue_name(settings, namespace, node_name)
        queues.append(declared_queue(queue))

        def run(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
            # A message can come from anywhere: one whose arguments are not (state id, run id) is logged
            # and dropped, so it neither fails noisily nor reaches the ledger.
            if (problem := task_args_problem(args, kwargs)) is not None:
                log.warning("discarded a message for %s: %s", self.name, problem)
                return {"status": "DISCARDED"}
            return worker.run_state(*args)

        # `throws`: an ERRORED state is an expected failure, logged by Celery in one line without a traceback.
        app.task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            throws=(StateErrored,),
            queue=queue,
        )(run)
    app.conf.task_queues = queues
    return worker
