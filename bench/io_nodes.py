"""Nodes of the async I/O benchmark (`python -m bench.async_io`): a root fanning out to async waits."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from exo_celery import BaseNode


class IoFan(BaseNode):
    """The root: `count` outputs."""

    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.count))]


class IoWait(BaseNode):
    """Simulated I/O: awaits `seconds` (a call to an API or a model)."""

    class Inputs(BaseModel):
        item: str
        seconds: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        await asyncio.sleep(float(self.inputs.seconds))
        return self.Outputs(item=self.inputs.item)


NODES = [IoFan, IoWait]
