"""Nodes written against the real exospherehost SDK (its BaseNode and signals), served by exo_celery.

Imported only by the compat interpreter (Python 3.12 with exospherehost installed), including the
`exo-celery worker` processes the compat tests start (`--nodes tests.compat.sdk.nodes:NODES`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from exospherehost import BaseNode, PruneSignal, ReQueueAfterSignal
from pydantic import BaseModel


class SdkSplit(BaseNode):
    """Fan-out: one output per item of a JSON list."""

    class Inputs(BaseModel):
        items: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in json.loads(self.inputs.items)]


class SdkWork(BaseNode):
    """Upper-cases its item; prunes items starting with 'p' (exospherehost.PruneSignal)."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        result: str

    class Secrets(BaseModel):
        token: str

    async def execute(self) -> Outputs:
        if self.inputs.item.startswith("p"):
            raise PruneSignal({"reason": f"pruned {self.inputs.item}"})
        return self.Outputs(result=f"{self.inputs.item.upper()}:{len(self.secrets.token)}")


class SdkCollect(BaseNode):
    """A uniting node: the gathered JSON array, counted."""

    class Inputs(BaseModel):
        values: str

    class Outputs(BaseModel):
        count: str
        values: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        values = json.loads(self.inputs.values)
        return self.Outputs(count=str(len(values)), values=json.dumps(values))


class SdkPoll(BaseNode):
    """Requeues itself (exospherehost.ReQueueAfterSignal) until it has been called `times` + 1 times."""

    class Inputs(BaseModel):
        path: str
        times: str

    class Outputs(BaseModel):
        calls: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        path = Path(self.inputs.path)
        with path.open("a") as f:
            f.write("x")
        calls = path.stat().st_size
        if calls <= int(self.inputs.times):
            raise ReQueueAfterSignal(timedelta(milliseconds=100))
        return self.Outputs(calls=str(calls))


class SdkFail(BaseNode):
    """Always raises: retried by the graph's retry policy, then ERRORED."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        raise RuntimeError(f"refused {self.inputs.text}")


NODES = [SdkSplit, SdkWork, SdkCollect, SdkPoll, SdkFail]
