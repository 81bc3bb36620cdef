"""The demo graph: split a list, square each item in parallel, sum them in a unite."""

from __future__ import annotations

import json

from pydantic import BaseModel

from .graph import GraphNodeModel, UnitesModel
from .node import BaseNode

NAMESPACE = "demo"
GRAPH = "squares"


class SplitNumbers(BaseNode):
    """Fan out: one output per number."""

    class Inputs(BaseModel):
        numbers: str

    class Outputs(BaseModel):
        number: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(number=str(n)) for n in json.loads(self.inputs.numbers)]


class Square(BaseNode):
    """One branch per number."""

    class Inputs(BaseModel):
        number: str

    class Outputs(BaseModel):
        square: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        n = int(self.inputs.number)
        return self.Outputs(square=str(n * n))


class SumAll(BaseNode):
    """The unite: gathers every square as a JSON array."""

    class Inputs(BaseModel):
        squares: str

    class Outputs(BaseModel):
        total: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs(total=str(sum(int(x) for x in json.loads(self.inputs.squares))))


NODES = [SplitNumbers, Square, SumAll]

GRAPH_NODES = [
    GraphNodeModel(
        node_name="SplitNumbers", identifier="split", inputs={"numbers": "[1, 2, 3, 4, 5]"}, next_nodes=["square"]
    ),
    GraphNodeModel(
        node_name="Square", identifier="square", inputs={"number": "${{ split.outputs.number }}"}, next_nodes=["sum"]
    ),
    GraphNodeModel(
        node_name="SumAll",
        identifier="sum",
        inputs={"squares": "${{ square.outputs.square }}"},
        unites=UnitesModel(identifier="split"),
    ),
]
