"""`StateManager`: the Python API to upsert graphs, trigger runs and watch them (exospherehost's names)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, wraps
from typing import Any, TypeVar

from celery import Celery

from .celery_app import make_app, publish
from .crypto import decrypt_secrets, encrypt_secrets, redact
from .engine import CompiledGraph, new_id, plan_root
from .errors import (
    ArgumentError,
    BrokerUnavailable,
    ConfigError,
    ConflictError,
    GraphValidationError,
    NotFoundError,
    PlanError,
    TriggerError,
    WaitTimeout,
)
from .graph import GraphTemplate, parse_graph_parts
from .ledger import clock
from .ledger.db import translate_errors, without_password
from .ledger.meta import check_secrets_key
from .ledger.notify import FALLBACK_POLL, READY_TIMEOUT, subscribe
from .ledger.repo import Repo
from .ledger.runs import NewRun
from .ledger.runtimes import Runtimes, waiting_reason
from .ledger.transitions import Transitions
from .mapping import as_text
from .outcomes import Dispatch, dispatch_of
from .plan import status_for_due
from .settings import Settings, load_settings
from .status import TERMINAL_RUNS, RunStatus, StateStatus
from .validate import name_problem, store_key_problem, text_problem, validate_template

_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("exo_celery.client")


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
            if isinstance(key, str) and kind == "input" and (problem := text_problem(key)) is not None:
                problems.append(f"input key {key[:60]!r} {problem}")
            if isinstance(value, str) and (problem := text_problem(value)) is not None:
                problems.append(f"{kind} {str(key)[:60]!r} {problem}")
            if not isinstance(key, str) or not key or (kind == "store" and "." in key):
                problems.append(
                    f"{kind} key {key!r} must be a non-empty string" + (" without '.'" if kind == "store" else "")
                )
            if not isinstance(value, str):
                problems.append(f"{kind} {key!r} must be a string, got {type(value).__name__}")
    return problems


def _secrets_in_template(nodes: list[Any], defaults: dict[str, str], secrets: dict[str, Any]) -> list[str]:
    """Template inputs or store defaults holding a secret's value: the template is stored in clear."""
    values = {name: value for name, value in secrets.items() if isinstance(value, str) and value}
    found: list[str] = []
    places = [(f"node {n.identifier!r}: input {k!r}", as_text(v)) for n in nodes for k, v in n.inputs.items()]
    places += [(f"store_config.default_values: {k!r}", v) for k, v in defaults.items() if isinstance(v, str)]
    for where, text in places:
        for name, value in values.items():
            if value in text:
                found.append(f"{where} holds the value of secret {name!r} (read it from self.secrets in the node)")
    return found


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


MAX_IDEMPOTENCY_KEY = 300
_SURROGATE = re.compile("[\ud800-\udfff]")


def _trigger_problems(
    inputs: object, store: object, start_delay: object, idempotency_key: object
) -> list[str]:
    """What is wrong with a trigger's arguments themselves (before any value or the graph is looked at)."""
    problems: list[str] = []
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        or "\x00" in idempotency_key
        or _SURROGATE.search(idempotency_key)
    ):
        problems.append(f"idempotency_key must be a string of 1-{MAX_IDEMPOTENCY_KEY} characters without NUL")
    for kind, given in (("inputs", inputs), ("store", store)):
        if given is not None and not isinstance(given, dict):
            problems.append(f"{kind} must be a dict of strings, got {type(given).__name__}")
    if not isinstance(start_delay, (int, float)) or not math.isfinite(start_delay) or start_delay < 0:
        problems.append(f"start_delay must be a finite number of milliseconds >= 0, got {start_delay!r}")
    return problems


@dataclass
class _RunRequest:
    """What a trigger asks for, checked; `dropped` collects the inputs the root does not take."""

    graph_name: str
    given: dict[str, str]
    store: dict[str, str]
    start_delay: float
    value_problems: list[str]
    dropped: list[str] = field(default_factory=list)


_Cls = TypeVar("_Cls", bound=type)


def _ledger_errors(cls: _Cls) -> _Cls:
    """Every `*_sync` method (the async ones call them) raises LedgerUnavailable or ConfigError, naming the
    ledger in one line, instead of SQLAlchemy's OperationalError while the database is down or misnamed."""

    def translating(method: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with translate_errors(self.settings.ledger_url):
                return method(self, *args, **kwargs)

        return call

    for name, value in list(vars(cls).items()):
        if name.endswith("_sync") and callable(value):
            setattr(cls, name, translating(value))
    return cls


@_ledger_errors
class StateManager:
    """Client for one namespace. Every public method is `async`, like exospherehost's.

    The positional arguments are the SDK's (`namespace, state_manager_uri, key,
    state_manager_version`); the last three are accepted and unused, since the client talks to
    the ledger and the broker directly. Ours are keyword-only.
    """

    def __init__(
        self,
        namespace: str,
        state_manager_uri: str | None = None,
        key: str | None = None,
        state_manager_version: str = "v0",
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        validation_timeout: float = 60.0,
        settings: Settings | None = None,
    ) -> None:
        if (problem := name_problem("namespace", namespace)) is not None:
            raise ConfigError(problem)
        self.namespace = namespace
        # Kept for code that reads them; nothing here sends requests to a state manager.
        self.state_manager_uri = state_manager_uri
        self.key = key
        self.state_manager_version = state_manager_version
        self.settings = settings or load_settings(database_url=database_url, broker_url=broker_url)
        self.validation_timeout = validation_timeout
        self._compiled: dict[tuple[str, int], CompiledGraph] = {}
        self._broker_checked = False
        self.repo = Repo(self.settings.ledger_url)
        self.transitions = Transitions(
            self.settings.ledger_url,
            self.settings.lease_seconds,
            self.settings.max_countdown,
            max_input_bytes=self.settings.max_input_bytes,
        )

    @cached_property
    def app(self) -> Celery:
        """The Celery app used to publish (created on first publish)."""
        return make_app(self.settings, main=f"exo_celery.client.{self.namespace}")

    @cached_property
    def runtimes(self) -> Runtimes:
        """Which runtimes are live (reads only: a client never registers one)."""
        return Runtimes(self.settings.ledger_url, self.settings.lease_seconds)

    def _waiting(self, run: dict[str, Any]) -> dict[tuple[str, str], int]:
        """The run's nodes whose unclaimed states no live runtime serves, with how many states wait."""
        if RunStatus(run["status"]) in TERMINAL_RUNS:
            return {}
        return self.runtimes.waiting_nodes(run["id"])

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
        polling_interval: float = 1,
    ) -> dict[str, Any]:
        """Validate and store a template; raises GraphValidationError listing every problem.

        The SDK's signature. Validation happens in this call (no PENDING state to poll), so
        `polling_interval` is accepted and unused; `validation_timeout` bounds the wait for
        workers to register nodes the graph names.
        """
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
        polling_interval: float = 1,
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
        problems += _secrets_in_template(nodes, store_cfg.default_values, secrets)
        timeout = self.validation_timeout if validation_timeout is None else validation_timeout
        deadline = time.monotonic() + timeout
        while True:
            keys = {
                (n.namespace or self.namespace, n.node_name)
                for n in nodes
                if name_problem("", n.namespace or self.namespace) is None and name_problem("", n.node_name) is None
            }  # a name the rule rejects is never sent to the database (validation reports it)
            registry = self.repo.registry(keys)
            try:
                report = validate_template(nodes, secrets, store_cfg, parsed_triggers, registry)
            except (MemoryError, RecursionError) as exc:  # never a raw interpreter error (issue 13, item 6)
                problem = f"the template ({len(nodes)} nodes) is too large to validate: {type(exc).__name__}"
                raise GraphValidationError(str(graph_name), [problem]) from None
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
        key = self.settings.fernet_key()
        check_secrets_key(self.settings.ledger_url, key)  # workers must be able to decrypt what is stored
        cipher = encrypt_secrets(secrets, key)

        def same_secrets(stored: str) -> bool:  # an identical upsert adds no version
            try:
                return decrypt_secrets(stored, key) == secrets
            except Exception:  # stored under another key: not the same
                return False

        version = self.repo.save_graph(
            self.namespace, graph_name, template.model_dump(mode="json"), cipher, same_secrets=same_secrets
        )
        return self._graph_view(template, version)

    def _graph_view(self, template: GraphTemplate, version: int) -> dict[str, Any]:
        """Exosphere's UpsertGraphTemplateResponse keys (secrets as {name: true}), plus ours."""
        view = template.model_dump(mode="json", exclude={"secret_names", "triggers"})
        view["secrets"] = {name: True for name in template.secret_names}
        view["triggers"] = [t.exosphere_view() for t in template.triggers]
        times = self.repo.graph_times(self.namespace, template.name, version)
        view["created_at"], view["updated_at"] = (iso(t) for t in times) if times else (None, None)
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

    def _with_secrets(self, graph: CompiledGraph) -> CompiledGraph:
        """`graph` knowing its secret values, so a trigger hides them (once per version). A client whose key
        cannot decrypt them still triggers (workers hold the key); it cannot tell a secret from other text."""
        if graph.hidden or not graph.template.secret_names:
            return graph
        try:
            known = graph.with_secrets(decrypt_secrets(graph.secrets_cipher, self.settings.fernet_key()))
        except ConfigError:
            return graph
        self._compiled[(graph.template.name, graph.version)] = known
        return known

    # -- runs ---------------------------------------------------------------
    async def trigger(
        self,
        graph_name: str,
        inputs: dict[str, str] | None = None,
        store: dict[str, str] | None = None,
        start_delay: int = 0,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Start a run; `start_delay` in ms. Returns {"status": "CREATED", "run_id": ...} and ours.

        Inputs the root node does not take are dropped, as Exosphere's state manager does;
        a warning names them and so does the response's `dropped_inputs`. With `idempotency_key`,
        a trigger that repeats a key of this namespace returns the run the first one made
        (`"existing": True`) instead of starting another, as Hatchet and Temporal do.
        """
        return await asyncio.to_thread(
            self.trigger_sync, graph_name, inputs, store, start_delay, idempotency_key=idempotency_key
        )

    def trigger_sync(
        self,
        graph_name: str,
        inputs: dict[str, str] | None = None,
        store: dict[str, str] | None = None,
        start_delay: int = 0,
        cron_key: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Blocking form of `trigger`; `cron_key` makes a cron firing happen once."""
        problems = _trigger_problems(inputs, store, start_delay, idempotency_key)
        if problems:
            raise TriggerError(f"cannot trigger graph {graph_name!r}: " + "; ".join(problems))
        given, store = dict(inputs or {}), dict(store or {})
        value_problems = _value_problems(given, store)
        self._check_graph_name(graph_name)
        if idempotency_key is not None and (existing := self._existing_run(graph_name, idempotency_key)):
            return existing
        if cron_key is None:  # beat's cron firings are written anyway: its sweep sends them once the broker is back
            self._check_broker()
        request = _RunRequest(graph_name, given, store, start_delay, value_problems)
        run = self._insert_run(request, cron_key, idempotency_key)
        extra = {"graph_name": graph_name, "namespace": self.namespace, "dropped_inputs": list(request.dropped)}
        if request.dropped:
            log.warning(
                "trigger of graph %r: dropped input(s) %s, which the root node does not take",
                graph_name,
                ", ".join(repr(k) for k in request.dropped),
            )
        if run is None:
            if idempotency_key is not None and (existing := self._existing_run(graph_name, idempotency_key)):
                return existing  # another trigger with the same key got there first
            return {"status": "DUPLICATE", "run_id": None, **extra}
        root, run_id = run.root, run.run_id
        if root.status == StateStatus.QUEUED:
            self._publish(
                [Dispatch(root.id, run_id, root.namespace, root.node_name, graph_name, root.identifier, run.due_at)]
            )
        created = {"status": "CREATED", "run_id": run_id, **extra}
        return created if idempotency_key is None else {**created, "existing": False}

    def _insert_run(self, request: _RunRequest, cron_key: str | None, idempotency_key: str | None) -> NewRun | None:
        """Build the run of the graph's newest version and insert it (again if a newer version was stored
        meanwhile); None when its cron or idempotency key was used already."""
        name = request.graph_name
        for _ in range(10):
            version = self.repo.version_for_run(self.namespace, name)
            run = self._prepare_run(request, version)
            inserted = self.repo.create_run(self.namespace, name, version, run, cron_key, idempotency_key)
            if inserted != "stale":
                return run if inserted == "inserted" else None
        raise ConflictError(f"could not trigger graph {name!r}: its version kept changing")

    def _prepare_run(self, request: _RunRequest, version: int) -> NewRun:
        """The run of `version` a trigger asks for: its root state (inputs rendered), store and due time."""
        graph_name, given, store = request.graph_name, request.given, request.store
        graph = self._with_secrets(self._load_graph(graph_name, version))
        known = self._root_inputs(graph) if given else set()
        request.dropped[:] = [key for key in given if key not in known]
        inputs = {key: value for key, value in given.items() if key in known}
        problems = list(request.value_problems)
        root_spec = graph.topology.nodes[graph.topology.root]
        for kind, value in (("namespace", graph.namespace_of(root_spec.identifier)), ("node", root_spec.node_name)):
            if (problem := name_problem(f"root {kind}", value)) is not None:
                problems.append(f"{problem} (re-upsert the graph)")
        missing = [k for k in graph.template.store_config.required_keys if k not in store]
        if missing:
            problems.append(f"required store key(s) missing: {missing}")
        if problems:
            raise TriggerError(f"cannot trigger graph {graph_name!r}: " + "; ".join(problems))
        rules = graph.input_rules(self.settings.max_input_bytes)
        full_store = {**graph.template.store_config.default_values, **store}
        run_id = new_id()
        try:
            root = plan_root(graph.topology, graph.namespace_of, run_id, inputs, full_store, rules)
        except PlanError as exc:
            raise TriggerError(f"cannot trigger graph {graph_name!r}: {exc}") from exc
        now = clock.now(self.settings.ledger_url)
        due_at = now + request.start_delay / 1000.0
        root.status = status_for_due(due_at, now, self.settings.max_countdown)
        # A secret value given as a store value is stored as *** (as the root's rendered inputs are).
        return NewRun(run_id, root, redact(full_store, graph.hidden) if graph.hidden else full_store, due_at)

    def _existing_run(self, graph_name: str, idempotency_key: str) -> dict[str, Any] | None:
        """The run an earlier trigger with this key made (its root re-sent if it never arrived), or None."""
        row = self.repo.run_by_key(self.namespace, idempotency_key)
        if row is None:
            return None
        if row["graph_name"] != graph_name:
            raise TriggerError(
                f"cannot trigger graph {graph_name!r}: idempotency key {idempotency_key[:80]!r} was used by "
                f"run {row['id']} of graph {row['graph_name']!r}"
            )
        root = self.repo.waiting_state(row["id"], self._load_graph(graph_name, row["graph_version"]).topology.root)
        sent_long_ago = clock.now(self.settings.ledger_url) - self.settings.lease_seconds
        if root is not None and (root["dispatched_at"] or 0) < sent_long_ago:
            # Its first publish may have failed: a repeated trigger sends it again (a duplicate is harmless).
            self._publish([dispatch_of(root)])
        return {
            "status": "CREATED",
            "run_id": row["id"],
            "graph_name": graph_name,
            "namespace": self.namespace,
            "existing": True,
        }

    def _check_broker(self) -> None:
        """Before the first run is written: a broker that cannot be used fails the trigger, writing nothing.

        Checked once per StateManager; a broker lost later only delays the messages (beat re-sends them).
        """
        if self._broker_checked:
            return
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=5)
        except Exception as exc:
            cause = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise BrokerUnavailable(
                f"broker {without_password(self.settings.broker)} cannot be used ({type(exc).__name__}: {cause}); "
                "no run was written"
            ) from None
        self._broker_checked = True

    def _root_inputs(self, graph: CompiledGraph) -> set[str]:
        """The inputs the root node takes: its template's, and its registered schema's when known."""
        root = graph.topology.nodes[graph.topology.root]
        schema = self.repo.registry({(graph.namespace_of(root.identifier), root.node_name)})
        registered = next(iter(schema.values()))["inputs"] if schema else []
        return {*root.inputs, *registered}

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """A run's status and its states counted by status; `waiting` names the nodes whose states wait
        for a runtime (no live runtime serves them), e.g. `[{"node_name": "X", "namespace": "ns",
        "reason": "no live runtime serves node X", "states": 3}]`."""
        return await asyncio.to_thread(self.get_run_sync, run_id)

    def _in_namespace(self, run: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
        """`run` if it belongs to this client's namespace; a missing run or another namespace's is not found."""
        if run is None or run["namespace"] != self.namespace:
            raise NotFoundError(f"run {run_id!r} does not exist in namespace {self.namespace!r}")
        return run

    def _own_run(self, run_id: str) -> dict[str, Any]:
        """The run row if it belongs to this client's namespace; another namespace's run is not found."""
        return self._in_namespace(self.repo.get_run(_check_id("run", run_id)), run_id)

    def get_run_sync(self, run_id: str) -> dict[str, Any]:
        found, counts = self.repo.run_with_counts(_check_id("run", run_id))
        run = self._in_namespace(found, run_id)
        view = self._run_view(run, counts)
        view["waiting"] = [
            {"node_name": node, "namespace": ns, "reason": waiting_reason(ns, node, run["namespace"]), "states": n}
            for (ns, node), n in sorted(self._waiting(run).items())
        ]
        return view

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

    def list_runs_sync(
        self,
        graph_name: str | None = None,
        limit: int = 50,
        *,
        status: str | list[str] | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Blocking form of `list_runs`; `status` (one or several) and `since` (epoch seconds) filter."""
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ArgumentError(f"limit must be a whole number from 1 to 100000, got {limit!r}")
        if graph_name is not None:
            self._check_graph_name(graph_name)
        statuses = [status] if isinstance(status, str) else list(status or [])
        known = {s.value for s in RunStatus}
        unknown = [s for s in statuses if s not in known]
        if unknown:
            raise ArgumentError(f"unknown run status {unknown[0]!r}: expected one of {', '.join(sorted(known))}")
        found = self.repo.list_runs(self.namespace, graph_name, limit, statuses=statuses or None, since=since)
        return [self._run_view(r, None) for r in found]

    async def list_states(self, run_id: str) -> list[dict[str, Any]]:
        """Every state of a run; secret values are masked wherever they would appear. `waiting_reason`
        says why a state has not started when no live runtime serves its node (else None)."""
        return await asyncio.to_thread(self.list_states_sync, run_id)

    def list_states_sync(self, run_id: str) -> list[dict[str, Any]]:
        run = self._own_run(run_id)
        row = self.repo.load_graph(run["namespace"], run["graph_name"], run["graph_version"])
        try:
            hidden = list(decrypt_secrets(row["secrets_cipher"], self.settings.fernet_key()).values()) if row else []
        except ConfigError:  # workers redact before they write; the states must stay readable (why they failed)
            hidden = []
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
        waiting = self._waiting(run)
        views = []
        for s in self.repo.list_states(run_id):
            view = {k: redact(s[k], hidden) for k in fields}
            unserved = (s["namespace"], s["node_name"]) in waiting
            if (
                unserved
                and s["status"] in (StateStatus.QUEUED.value, StateStatus.CREATED.value)
                and s["lease_until"] is None
            ):
                view["waiting_reason"] = waiting_reason(s["namespace"], s["node_name"], run["namespace"])
            else:
                view["waiting_reason"] = None
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
                    raise WaitTimeout(f"run {run_id} is still {run['status']} after {timeout} s")
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
                    raise WaitTimeout(f"run {run_id} is still {run['status']} after {timeout} s")
                sub.wait_sync(pause if left is None else min(pause, left))

    async def manual_retry(self, state_id: str) -> dict[str, Any]:
        """Retry an ERRORED state; calling it again for the same state returns the same retry."""
        return await asyncio.to_thread(self.manual_retry_sync, state_id)

    def manual_retry_sync(self, state_id: str) -> dict[str, Any]:
        state = self.repo.get_state(_check_id("state", state_id))
        # A state belongs to its run's namespace (its graph's), wherever its node runs.
        if state is None or state["graph_namespace"] != self.namespace:
            raise NotFoundError(f"state {state_id!r} does not exist in namespace {self.namespace!r}")
        created, dispatches = self.transitions.manual_retry(state_id)
        self._publish(dispatches)
        return {
            "state_id": created["id"],
            "retry_of": state_id,
            "status": created["status"],
            "retry_count": created["retry_count"],
            "run_id": created["run_id"],
        }

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run: its states are CANCELLED at once and never run; executing ones are stopped by their worker
        within about a second (an async node's task is cancelled; a sync node is interrupted, see
        docs/execution.md) and their outcome is discarded: no outputs, no children."""
        return await asyncio.to_thread(self.cancel_sync, run_id)

    def cancel_sync(self, run_id: str) -> dict[str, Any]:
        """Blocking form of `cancel`."""
        self._own_run(run_id)  # a run's namespace never changes: checking first is enough
        return self._run_view(self.transitions.cancel(run_id), self.repo.state_counts(run_id))
