"""Nodes the benchmark's exo_celery worker serves (`--nodes bench.nodes:NODES`); all of them are no-ops.

Importing this module also installs the SQL statement counter when BENCH_SQL_DIR is set.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from exo_celery import BaseNode

from . import sqlcount  # noqa: F401  (installs the counter when BENCH_SQL_DIR is set)


class Fan(BaseNode):
    """Fan-out: `count` outputs."""

    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.count))]


class Noop(BaseNode):
    """One state of the fan-out (the chord header task's equivalent)."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(item=self.inputs.item)


class Gather(BaseNode):
    """The unite (the chord callback's equivalent): receives every branch's output."""

    class Inputs(BaseModel):
        items: str

    class Outputs(BaseModel):
        count: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(count=str(len(json.loads(self.inputs.items))))


class Hop(BaseNode):
    """One hop of a linear chain: passes a value on, like a task that sends the next one."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        n: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(n=str(int(self.inputs.n) + 1))


NODES = [Fan, Noop, Gather, Hop]
