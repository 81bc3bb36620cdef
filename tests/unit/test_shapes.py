"""Exosphere-shaped objects accepted by shape: foreign pydantic models, enums and signals (no SDK needed).

The compat suite (tests/compat/) checks the same against the real exospherehost package.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from exo_celery import CronTrigger, GraphNodeModel, RetryPolicyModel, RetryStrategyEnum, StoreConfigModel, UnitesModel
from exo_celery.graph import parse_graph_parts, parse_trigger
from exo_celery.signals import as_prune, as_requeue


class ForeignStrategy(str, Enum):  # the SDK's enums are other classes with the same values
    ALL_DONE = "ALL_DONE"


class ForeignRetry(str, Enum):
    LINEAR = "LINEAR"


class ForeignUnites(BaseModel):
    identifier: str
    strategy: ForeignStrategy = ForeignStrategy.ALL_DONE


class ForeignNode(BaseModel):
    node_name: str
    namespace: str
    identifier: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    next_nodes: list[str] | None = None
    unites: ForeignUnites | None = None


class ForeignPolicy(BaseModel):
    max_retries: int = 2
    strategy: ForeignRetry = ForeignRetry.LINEAR
    backoff_factor: int = 100
    exponent: int = 2
    max_delay: int | None = None


class ForeignStore(BaseModel):
    required_keys: list[str] = Field(default_factory=list)
    default_values: dict[str, str] = Field(default_factory=dict)


class ForeignCron(BaseModel):
    expression: str


def test_foreign_models_parse_as_ours() -> None:
    nodes, policy, store, triggers = parse_graph_parts(
        "g",
        [
            ForeignNode(node_name="A", namespace="ns", identifier="a", next_nodes=["b"]),
            ForeignNode(node_name="B", namespace="ns", identifier="b", unites=ForeignUnites(identifier="a")),
            {"node_name": "C", "identifier": "c", "unites": ForeignUnites(identifier="a")},  # a dict holding one
        ],
        ForeignPolicy(),
        ForeignStore(required_keys=["k"], default_values={"d": "1"}),
        [ForeignCron(expression="0 9 * * 1-5")],
    )
    assert [type(n) for n in nodes] == [GraphNodeModel] * 3
    assert nodes[1].unites == UnitesModel(identifier="a", strategy="ALL_DONE")
    assert policy == RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.LINEAR, backoff_factor=100)
    assert store == StoreConfigModel(required_keys=["k"], default_values={"d": "1"})
    assert triggers == [CronTrigger(expression="0 9 * * 1-5")]


def test_our_models_take_foreign_parts_at_construction() -> None:
    node = GraphNodeModel(node_name="A", identifier="a", unites=ForeignUnites(identifier="x"))
    assert node.unites is not None and node.unites.strategy == "ALL_DONE"
    assert RetryPolicyModel(strategy=ForeignRetry.LINEAR).strategy is RetryStrategyEnum.LINEAR
    assert GraphNodeModel.model_validate(ForeignNode(node_name="A", namespace="n", identifier="a")).namespace == "n"


def test_trigger_forms_and_exosphere_view() -> None:
    assert parse_trigger(ForeignCron(expression="0 2 * * *")) == CronTrigger(expression="0 2 * * *")
    view = parse_trigger({"type": "CRON", "value": {"expression": "0 2 * * *", "timezone": "UTC"}}).exosphere_view()
    assert view == {"type": "CRON", "value": {"expression": "0 2 * * *", "timezone": "UTC"}}


def test_subclasses_of_foreign_signals_are_honoured() -> None:
    class PruneSignal(Exception):
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

    class ReQueueAfterSignal(Exception):
        def __init__(self, delay: timedelta) -> None:
            self.delay = delay

    class MyPrune(PruneSignal):
        pass

    class MyRequeue(ReQueueAfterSignal):
        pass

    assert as_prune(MyPrune({"why": "x"})) == {"why": "x"}
    assert as_requeue(MyRequeue(timedelta(seconds=3))) == timedelta(seconds=3)
