"""`StateManager`: the Python API to upsert graphs, trigger runs and watch them (exospherehost's names)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from celery import Celery

from .celery_app import make_app, publish
from .crypto import REDACTED, decrypt_secrets, encrypt_secrets, redact
from .engine import CompiledGraph, PlanError, new_id, plan_root
from .errors import ConfigError, ExoError, GraphValidationError, NotFoundError, TriggerError
from .graph import GraphTemplate, parse_graph_parts
from .ledger.notify import FALLBACK_POLL, READY_TIMEOUT, subscribe
from .ledger.repo import NewRun, Repo
from .ledger.transitions import Dispatch, Transitions
from .settings import Settings, load_settings
from .status import TERMINAL_RUNS, RunStatus, StateStatus
from .validate import name_problem, store_key_problem, validate_template

_ID = re.compile(r"[0-9a-f]{32}")


def _check_id(kind: str, value: object) -> str:
    """Run and state ids are 32 hex digits; anything else cannot exist."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise NotFoundError(f"{kind} {str(value)[:80]!r} does not exist")
    return value


def _value_problems(inputs: dict[Any, Any], store: dict[Any, Any]) -> list[str]:
    """What is wrong with a trigger's input and store keys and values (strings, no NUL, store key rules)."""
    problems: list[str] = []
    for kind, values in (("input", inputs), ("store", store)):
        for key, value in values.items():
            if kind == "store" and (problem := store_key_problem(key)) is not None:
                problems.append(problem)
                continue
            if isinstance(value, str) and "\x00" in value:
                problems.append(f"{kind} {key!r} contains a NUL character")
            if not isinstance(key, str) or not key or (kind == "store" and "." in key):
                problems.append(
                    f"{kind} key {key!r} must be a non-empty string" + (" without '.'" if kind == "store" else "")
                )
            if not isinstance(value, str):
                problems.append(f"{kind} {key!r} must be a string, got {type(value).__name__}")
    return problems


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class StateManager:
    """Client for one namespace. Every public method is `async`, like exospherehost's.

    Exosphere-only arguments (`state_manager_uri`, `key`, ...) are accepted and ignored.
    """

    def __init__(
        self,
        namespace: str,
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        validation_timeout: float = 60.0,
        settings: Settings | None = None,
        **_exosphere_options: Any,
    ) -> None:
        if (problem := name_problem("namespace", namespace)) is not None:
            raise ConfigError(problem)
        self.namespace = namespace
        self.settings = settings or load_settings(database_url=database_url, broker_url=broker_url)
        self.validation_timeout = validation_timeout
        self._compiled: dict[tuple[str, int], CompiledGraph] = {}
        self.repo = Repo(self.settings.ledger_url)
        self.transitions = Transitions(
            self.settings.ledger_url, self.settings.lease_seconds, self.settings.max_countdown
        )

    @cached_property
    def app(self) -> Celery:
        """The Celery app used to publish (created on first publish)."""
        return make_app(self.settings, main=f"exo_celery.client.{self.namespace}")

    def _publish(self, dispatches: list[Dispatch]) -> None:
        publish(self.app, self.settings, dispatches)

    # -- graphs -----------------------------------------------------------
    async def upsert_graph(
        self,
        graph_name: str,
        graph_nodes: list[Any],
        secrets: dict[str, str] | None = None,
        retry_policy: Any = None,
        store_config: Any = None,
        triggers: list[Any] | None = None,
        validation_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Validate and store a template; raises GraphValidationError listing every problem."""
        return await asyncio.to_thread(
            self.upsert_graph_sync,
            graph_name,
            graph_nodes,
            secrets,
            retry_policy,
            store_config,
            triggers,
            validation_timeout,
        )

    async def upsert_graph_json(self, graph_name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Upsert from Exosphere's JSON body: {"secrets", "nodes", "retry_policy", "store_config", "triggers"}."""
        return await asyncio.to_thread(self.upsert_graph_json_sync, graph_name, body)

    def upsert_graph_json_sync(self, graph_name: str, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise GraphValidationError(graph_name, [f"the graph body must be a JSON object, got {type(body).__name__}"])
        unknown = sorted(set(body) - {"secrets", "nodes", "retry_policy", "store_config", "triggers"})
        if unknown:
            raise GraphValidationError(graph_name, [f"unknown top-level field(s) {unknown}"])
        return self.upsert_graph_sync(
            graph_name,
            body.get("nodes", []),
            body.get("secrets") or {},
            body.get("retry_policy"),
            body.get("store_config"),
            body.get("triggers"),
        )

    def upsert_graph_sync(
        self,
        graph_name: str,
        graph_nodes: list[Any],
        secrets: dict[str, str] | None = None,
        retry_policy: Any = None,
        store_config: Any = None,
        triggers: list[Any] | None = None,
        validation_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Blocking form of `upsert_graph`."""
        problems = [p for p in [name_problem("graph name", graph_name)] if p]
        if secrets is not None and not isinstance(secrets, dict):
            problems.append(f"secrets must be a mapping of names to strings, got {type(secrets).__name__}")
        secrets = dict(secrets) if isinstance(secrets, dict) else {}
        nodes, policy, store_cfg, parsed_triggers = parse_graph_parts(
            str(graph_name), graph_nodes, retry_policy, store_config, triggers, errors=problems
        )
        nodes = [n if n.namespace else n.model_copy(update={"namespace": self.namespace}) for n in nodes]
        timeout = self.validation_timeout if validation_timeout is None else validation_timeout
        deadline = time.monotonic() + timeout
        while True:
            keys = {(n.namespace or self.namespace, n.node_name) for n in nodes}
            report = validate_template(nodes, secrets, store_cfg, parsed_triggers, self.repo.registry(keys))
            report.errors[:0] = problems
            if report.errors or not report.missing_nodes or time.monotonic() >= deadline:
                break
            time.sleep(0.25)  # starting workers register their nodes
        if not report.ok:
            raise GraphValidationError(str(graph_name), report.all_errors())
        template = GraphTemplate(
            name=graph_name,
            namespace=self.namespace,
            nodes=nodes,
            retry_policy=policy,
            store_config=store_cfg,
            triggers=parsed_triggers,
            secret_names=sorted(secrets),
        )
        cipher = encrypt_secrets(secrets, self.settings.fernet_key())
        version = self.repo.save_graph(self.namespace, graph_name, template.model_dump(mode="json"), cipher)
        return self._graph_view(template, version)

    def _graph_view(self, template: GraphTemplate, version: int) -> dict[str, Any]:
        view = template.model_dump(mode="json", exclude={"secret_names"})
        view["secrets"] = {name: REDACTED for name in template.secret_names}
        view["version"] = version
        view["validation_status"] = "VALID"
        view["validation_errors"] = []
        return view

    async def get_graph(self, graph_name: str) -> dict[str, Any]:
        """The stored template, secret values masked."""
        return await asyncio.to_thread(self.get_graph_sync, graph_name)

    def get_graph_sync(self, graph_name: str) -> dict[str, Any]:
        graph = self._load_graph(graph_name)
        return self._graph_view(graph.template, graph.version)

    def _check_graph_name(self, graph_name: str) -> None:
        """A name that is not a valid graph name cannot exist (and is not sent to the database)."""
        if name_problem("graph name", graph_name) is not None:
            raise NotFoundError(f"graph {str(graph_name)[:80]!r} does not exist in namespace {self.namespace!r}")

    def _load_graph(self, graph_name: str, version: int | None = None) -> CompiledGraph:
        self._check_graph_name(graph_name)
        if version is None:
            version = self.repo.latest_version(self.namespace, graph_name)
        compiled = self._compiled.get((graph_name, version or 0))
        if compiled is not None:  # a stored version never changes
            return compiled
        row = self.repo.load_graph(self.namespace, graph_name, version) if version else None
        if row is None:
            raise NotFoundError(f"graph {graph_name!r} does not exist in namespace {self.namespace!r}")
        compiled = self._compiled[(graph_name, row["version"])] = CompiledGraph.from_row(row)
        return compiled

    # -- runs ---------------------------------------------------------------
    async def trigger(
        self,
        graph_name: str,
        inputs: dict[str, str] | None = None,
        store: dict[str, str] | None = None,
        start_delay: int = 0,
    ) -> dict[str, Any]:
        """Start a run; `start_delay` in ms. Returns {"status": "CREATED", "run_id": ...}."""
        return await asyncio.to_thread(self.trigger_sync, graph_name, inputs, store, start_delay)

    def trigger_sync(
        self,
        graph_name: str,
        inputs: dict[str, str] | None = None,
        store: dict[str, str] | None = None,
        start_delay: int = 0,
        cron_key: str | None = None,
    ) -> dict[str, Any]:
        """Blocking form of `trigger`; `cron_key` makes a cron firing happen once."""
        problems: list[str] = []
        for kind, given in (("inputs", inputs), ("store", store)):
            if given is not None and not isinstance(given, dict):
                problems.append(f"{kind} must be a dict of strings, got {type(given).__name__}")
        if not isinstance(start_delay, (int, float)) or not math.isfinite(start_delay) or start_delay < 0:
            problems.append(f"start_delay must be a finite number of milliseconds >= 0, got {start_delay!r}")
        if problems:
            raise TriggerError(f"cannot trigger graph {graph_name!r}: " + "; ".join(problems))
        inputs, store = dict(inputs or {}), dict(store or {})
        value_problems = _value_problems(inputs, store)
        self._check_graph_name(graph_name)

        def prepare(version: int) -> NewRun:
            graph = self._load_graph(graph_name, version)
            problems = [*value_problems, *self._input_problems(graph, inputs)]
            missing = [k for k in graph.template.store_config.required_keys if k not in store]
            if missing:
                problems.append(f"required store key(s) missing: {missing}")
            if problems:
                raise TriggerError(f"cannot trigger graph {graph_name!r}: " + "; ".join(problems))
            full_store = {**graph.template.store_config.default_values, **store}
            run_id = new_id()
            try:
                root = plan_root(graph.topology, graph.namespace_of, run_id, inputs, full_store)
            except PlanError as exc:
                raise TriggerError(f"cannot trigger graph {graph_name!r}: {exc}") from exc
            now = time.time()
            due_at = now + start_delay / 1000.0
            if due_at - now > self.settings.max_countdown:
                root.status = StateStatus.CREATED
            return NewRun(run_id, root, full_store, due_at)

        run = self.repo.create_run(self.namespace, graph_name, prepare, cron_key)
        if run is None:
            return {"status": "DUPLICATE", "run_id": None, "graph_name": graph_name, "namespace": self.namespace}
        root, run_id = run.root, run.run_id
        if root.status == StateStatus.QUEUED:
            self._publish(
                [Dispatch(root.id, run_id, root.namespace, root.node_name, graph_name, root.identifier, run.due_at)]
            )
        return {"status": "CREATED", "run_id": run_id, "graph_name": graph_name, "namespace": self.namespace}

    def _input_problems(self, graph: CompiledGraph, inputs: dict[str, Any]) -> list[str]:
        """Trigger inputs that the root node does not take (its registered schema, else the template's)."""
        if not inputs:
            return []
        root = graph.topology.nodes[graph.topology.root]
        schema = self.repo.registry({(graph.namespace_of(root.identifier), root.node_name)})
        known = next(iter(schema.values()))["inputs"] if schema else list(root.inputs)
        return [
            f"input {key!r} is not an input of the root node {root.identifier!r} ({root.node_name})"
            for key in inputs
            if key not in known
        ]

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """A run's status and its states counted by status."""
        return await asyncio.to_thread(self.get_run_sync, run_id)

    def get_run_sync(self, run_id: str) -> dict[str, Any]:
        run, counts = self.repo.run_with_counts(_check_id("run", run_id))
        if run is None:
            raise NotFoundError(f"run {run_id!r} does not exist")
        return self._run_view(run, counts)

    @staticmethod
    def _run_view(run: dict[str, Any], counts: dict[str, int] | None) -> dict[str, Any]:
        view = {
            "run_id": run["id"],
            "graph_name": run["graph_name"],
            "namespace": run["namespace"],
            "status": run["status"],
            "created_at": iso(run["created_at"]),
            "started_at": iso(run["started_at"]),
            "finished_at": iso(run["finished_at"]),
        }
        if counts is not None:
            view["counts"] = counts
        return view

    async def list_runs(self, graph_name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Runs of this namespace, newest first."""
        return await asyncio.to_thread(self.list_runs_sync, graph_name, limit)

    def list_runs_sync(self, graph_name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ExoError(f"limit must be a whole number from 1 to 100000, got {limit!r}")
        return [self._run_view(r, None) for r in self.repo.list_runs(self.namespace, graph_name, limit)]

    async def list_states(self, run_id: str) -> list[dict[str, Any]]:
        """Every state of a run; secret values are masked wherever they would appear."""
        return await asyncio.to_thread(self.list_states_sync, run_id)

    def list_states_sync(self, run_id: str) -> list[dict[str, Any]]:
        run = self.repo.get_run(_check_id("run", run_id))
        if run is None:
            raise NotFoundError(f"run {run_id!r} does not exist")
        row = self.repo.load_graph(run["namespace"], run["graph_name"], run["graph_version"])
        hidden = list(decrypt_secrets(row["secrets_cipher"], self.settings.fernet_key()).values()) if row else []
        fields = (
            "id",
            "identifier",
            "node_name",
            "namespace",
            "status",
            "inputs",
            "outputs",
            "error",
            "retry_count",
            "parents",
            "data",
        )
        views = []
        for s in self.repo.list_states(run_id):
            view = {k: redact(s[k], hidden) for k in fields}
            view.update(
                run_id=s["run_id"],
                created_at=iso(s["created_at"]),
                updated_at=iso(s["updated_at"]),
                due_at=iso(s["due_at"]),
                retry_of=s["retry_of"],
                attempts=s["attempts"],
            )
            views.append(view)
        return views

    async def wait(
        self, run_id: str, timeout: float | None = None, *, poll_interval: float | None = None
    ) -> dict[str, Any]:
        """The run once it is SUCCESS, FAILED or CANCELLED; TimeoutError after `timeout` seconds.

        Woken by the ledger's notification that the run ended (`exo_celery.ledger.notify`: PostgreSQL
        LISTEN/NOTIFY, one listening connection per process; the embedded ledger checked for changes
        every 10 ms), and reading the run anyway every `poll_interval` seconds (default 2) in case a
        notification was lost.
        """
        _check_id("run", run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FALLBACK_POLL if poll_interval is None else poll_interval
        sub = subscribe(self.settings.ledger_url, run_id, block=False)
        try:
            if not sub.listening.is_set():  # only the process's first waiter waits for the LISTEN
                await asyncio.to_thread(sub.listening.wait, READY_TIMEOUT)
            while True:
                sub.clear()  # before the read: an end committed after it still wakes us
                run = await self.get_run(run_id)
                if RunStatus(run["status"]) in TERMINAL_RUNS:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout} s")
                await sub.wait(pause if left is None else min(pause, left))
        finally:
            sub.close()

    def wait_sync(
        self, run_id: str, timeout: float | None = None, *, poll_interval: float | None = None
    ) -> dict[str, Any]:
        """Blocking form of `wait` (no event loop needed)."""
        _check_id("run", run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FALLBACK_POLL if poll_interval is None else poll_interval
        with subscribe(self.settings.ledger_url, run_id) as sub:
            while True:
                sub.clear()
                run = self.get_run_sync(run_id)
                if RunStatus(run["status"]) in TERMINAL_RUNS:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout} s")
                sub.wait_sync(pause if left is None else min(pause, left))

    async def manual_retry(self, state_id: str) -> dict[str, Any]:
        """Retry an ERRORED state; calling it again for the same state returns the same retry."""
        return await asyncio.to_thread(self.manual_retry_sync, state_id)

    def manual_retry_sync(self, state_id: str) -> dict[str, Any]:
        created, dispatches = self.transitions.manual_retry(_check_id("state", state_id))
        self._publish(dispatches)
        return {
            "state_id": created["id"],
            "retry_of": state_id,
            "status": created["status"],
            "retry_count": created["retry_count"],
            "run_id": created["run_id"],
        }

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run: waiting states are CANCELLED, running ones finish without children."""
        return await asyncio.to_thread(self.cancel_sync, run_id)

    def cancel_sync(self, run_id: str) -> dict[str, Any]:
        return self._run_view(self.transitions.cancel(_check_id("run", run_id)), self.repo.state_counts(run_id))
