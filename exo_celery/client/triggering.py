"""Triggering a run: its arguments checked, the root planned, the run inserted, the root published."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..crypto import redact
from ..engine import CompiledGraph, new_id, plan_root
from ..errors import BrokerUnavailable, ConflictError, PlanError, TriggerError
from ..ledger import clock
from ..ledger.db import without_password
from ..ledger.runs import NewRun
from ..outcomes import Dispatch, dispatch_of
from ..plan import status_for_due
from ..status import StateStatus
from ..validate import name_problem
from .base import ClientBase, ledger_errors
from .checks import RunRequest, trigger_problems, trigger_value_problems

log = logging.getLogger("exo_celery.client")  # the logger's name users configure (docs/migrating-from-exosphere.md)


@ledger_errors
class Triggering(ClientBase):
    """`trigger` and `trigger_sync` (with beat's `cron_key`)."""

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
        problems = trigger_problems(inputs, store, start_delay, idempotency_key)
        if problems:
            raise TriggerError(f"cannot trigger graph {graph_name!r}: " + "; ".join(problems))
        given, store = dict(inputs or {}), dict(store or {})
        value_problems = trigger_value_problems(given, store)
        self._check_graph_name(graph_name)
        if idempotency_key is not None and (existing := self._existing_run(graph_name, idempotency_key)):
            return existing
        if cron_key is None:  # beat's cron firings are written anyway: its sweep sends them once the broker is back
            self._check_broker()
        request = RunRequest(graph_name, given, store, start_delay, value_problems)
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

    def _insert_run(self, request: RunRequest, cron_key: str | None, idempotency_key: str | None) -> NewRun | None:
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

    def _prepare_run(self, request: RunRequest, version: int) -> NewRun:
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
