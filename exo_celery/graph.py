"""Graph template models, with the exospherehost SDK's names and fields."""

from __future__ import annotations

import json
import random
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CronError, GraphValidationError, TemplateError
from .retry import RetryStrategyEnum, compute_delay


def plain(value: Any) -> Any:
    """`value` with foreign pydantic models dumped to dicts and enums to their values.

    This is how exospherehost's own objects (`exospherehost.GraphNodeModel`, its enums, ...)
    are accepted by shape without importing that package: they become the plain data our models
    validate. Our own models are left alone.
    """
    if isinstance(value, _ShapeModel):
        return value
    if isinstance(value, BaseModel):
        return plain(value.model_dump())
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class _ShapeModel(BaseModel):
    """Base of the template models: an instance of a foreign model of the same shape is accepted."""

    @model_validator(mode="before")
    @classmethod
    def _accept_by_shape(cls, data: Any) -> Any:
        if isinstance(data, BaseModel) and not isinstance(data, cls):
            return plain(data)
        if isinstance(data, dict):
            return {k: plain(v) if isinstance(v, (BaseModel, Enum)) else v for k, v in data.items()}
        return data


class UnitesStrategyEnum(str, Enum):
    """When a uniting node fires: all branches fine (SUCCESS/PRUNED), or all merely finished."""

    ALL_SUCCESS = "ALL_SUCCESS"
    ALL_DONE = "ALL_DONE"


class UnitesModel(_ShapeModel):
    """`unites` of a node: run once per execution of `identifier`, after all its branches."""

    identifier: str
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS


class GraphNodeModel(_ShapeModel):
    """One node of a graph template."""

    model_config = ConfigDict(extra="forbid")

    node_name: str
    namespace: str | None = None  # the StateManager's namespace when omitted
    identifier: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    next_nodes: list[str] | None = None
    unites: UnitesModel | None = None


class RetryPolicyModel(_ShapeModel):
    """Graph-level retry policy; delays in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(3, ge=0, le=1000)
    strategy: RetryStrategyEnum = RetryStrategyEnum.EXPONENTIAL
    backoff_factor: int = Field(2000, gt=0, le=7 * 24 * 3600 * 1000)
    exponent: int = Field(2, gt=0, le=100)
    max_delay: int | None = Field(None, gt=0)

    def compute_delay(self, retry_count: int, rng: random.Random | None = None) -> int:
        """Delay in ms before retry number `retry_count` (1 = first retry)."""
        return compute_delay(self.strategy, self.backoff_factor, self.exponent, self.max_delay, retry_count, rng)


class StoreConfigModel(_ShapeModel):
    """Store keys a trigger must give, and defaults for the rest."""

    model_config = ConfigDict(extra="forbid")

    required_keys: list[str] = Field(default_factory=list)
    default_values: dict[str, str] = Field(default_factory=dict)


class CronTrigger(_ShapeModel):
    """Trigger the graph at each time of a 5-field cron expression (UTC)."""

    model_config = ConfigDict(extra="forbid")

    expression: str
    type: str = "CRON"
    timezone: str = "UTC"

    @field_validator("type")
    @classmethod
    def _only_cron(cls, value: str) -> str:
        if value.upper() != "CRON":
            raise CronError(f"unsupported trigger type {value!r} (only CRON)")
        return "CRON"

    @field_validator("timezone")
    @classmethod
    def _only_utc(cls, value: str) -> str:
        if value.upper() not in {"UTC", "ETC/UTC", "Z"}:
            raise CronError(f"unsupported timezone {value!r}: cron triggers run in UTC")
        return "UTC"

    def exosphere_view(self) -> dict[str, Any]:
        """Exosphere's response form: {"type": "CRON", "value": {"expression", "timezone"}}."""
        return {"type": "CRON", "value": {"expression": self.expression, "timezone": self.timezone}}


class GraphTemplate(BaseModel):
    """A whole template as the ledger keeps it (secrets are held apart, encrypted)."""

    name: str
    namespace: str
    nodes: list[GraphNodeModel]
    retry_policy: RetryPolicyModel = Field(default_factory=lambda: RetryPolicyModel())
    store_config: StoreConfigModel = Field(default_factory=StoreConfigModel)
    triggers: list[CronTrigger] = Field(default_factory=list)
    secret_names: list[str] = Field(default_factory=list)

    @field_validator("nodes")
    @classmethod
    def _nodes_not_empty(cls, nodes: list[GraphNodeModel]) -> list[GraphNodeModel]:
        if not nodes:
            raise TemplateError("a graph needs at least one node")
        return nodes


def _describe(exc: ValidationError, where: str) -> list[str]:
    return [f"{where}{'.' + '.'.join(str(p) for p in e['loc']) if e['loc'] else ''}: {e['msg']}" for e in exc.errors()]


def parse_trigger(raw: Any) -> CronTrigger:
    """A trigger from a model (ours or exospherehost's), an expression string, or Exosphere's JSON form."""
    if isinstance(raw, CronTrigger):
        return raw
    raw = plain(raw)
    if isinstance(raw, str):
        return CronTrigger(expression=raw)
    if isinstance(raw, dict):
        if "value" in raw:
            if str(raw.get("type", "CRON")).upper() != "CRON":
                raise CronError(f"unsupported trigger type {raw.get('type')!r} (only CRON)")
            return CronTrigger(**raw["value"])
        return CronTrigger(**raw)
    raise CronError(f"a trigger must be a CronTrigger, got {type(raw).__name__}")


def parse_graph_parts(
    graph_name: str,
    graph_nodes: Any,
    retry_policy: Any = None,
    store_config: Any = None,
    triggers: Any = None,
    errors: list[str] | None = None,
) -> tuple[list[GraphNodeModel], RetryPolicyModel, StoreConfigModel, list[CronTrigger]]:
    """Coerce models or plain dicts into template parts, listing every shape error at once.

    With `errors` given, problems are appended to it (and bad parts replaced by defaults)
    so the caller can report them together with the template's other problems.
    """
    collect = errors
    errors = [] if collect is None else collect
    nodes = _parse_nodes(graph_nodes, errors)
    policy = _coerce(RetryPolicyModel, retry_policy, "retry_policy", errors)
    store = _coerce(StoreConfigModel, store_config, "store_config", errors)
    if triggers is not None and not isinstance(triggers, (list, tuple)):
        errors.append(f"triggers: expected a list of triggers, got {type(triggers).__name__}")
        triggers = []
    _check_input_values(nodes, errors)
    parsed_triggers: list[CronTrigger] = []
    for i, raw in enumerate(triggers or []):
        try:
            parsed_triggers.append(parse_trigger(raw))
        except (ValidationError, ValueError, TypeError) as exc:
            errors.append(f"triggers[{i}]: {exc}")
    if errors and collect is None:
        raise GraphValidationError(graph_name, errors)
    return nodes, policy, store, parsed_triggers


def _parse_nodes(graph_nodes: Any, errors: list[str]) -> list[GraphNodeModel]:
    nodes: list[GraphNodeModel] = []
    if not isinstance(graph_nodes, (list, tuple)):
        errors.append(f"nodes: expected a list of nodes, got {type(graph_nodes).__name__}")
        graph_nodes = []
    for i, raw in enumerate(graph_nodes):
        try:
            nodes.append(raw if isinstance(raw, GraphNodeModel) else GraphNodeModel.model_validate(plain(raw)))
        except ValidationError as exc:
            errors.extend(_describe(exc, f"nodes[{i}]"))
    if not graph_nodes:
        errors.append("nodes: a graph needs at least one node")
    return nodes


def _coerce(model: type[BaseModel], raw: Any, where: str, errors: list[str]) -> Any:
    if raw is None:
        return model()
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(plain(raw))
    except ValidationError as exc:
        errors.extend(_describe(exc, where))
        return model()


def _check_input_values(nodes: list[GraphNodeModel], errors: list[str]) -> None:
    for node in nodes:
        for field, value in node.inputs.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                errors.append(
                    f"node {node.identifier!r}: input {field!r} must be a string (or JSON value), "
                    f"got {type(value).__name__}"
                )
