"""Upserting graph templates (validated, secrets encrypted, a version per change) and reading them back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..crypto import decrypt_secrets, encrypt_secrets
from ..errors import GraphValidationError
from ..graph import GraphTemplate, parse_graph_parts
from ..ledger.meta import check_secrets_key
from ..validate import name_problem, validate_template
from .base import ClientBase, ledger_errors
from .checks import iso, secrets_in_template


@ledger_errors
class Graphs(ClientBase):
    """`upsert_graph`, `upsert_graph_json`, `get_graph` and their blocking forms."""

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
        problems += secrets_in_template(nodes, store_cfg.default_values, secrets)
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
