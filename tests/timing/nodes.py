"""Nodes for the timing, recovery and operator tests (importable by workers as `tests.timing.nodes`).

Every node appends one line per execution to a file, so a test can count executions
across worker processes and read when each one started (`time.time()`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from exo_celery import BaseNode

from .. import nodes as shared


def stamp(path: str, tag: str = "") -> int:
    """Append `<time> <pid> <tag>` to `path`; returns how many executions the file now records."""
    with open(path, "a") as f:
        f.write(f"{time.time()} {os.getpid()} {tag}\n")
    return len(Path(path).read_text().splitlines())


class Stamp(BaseNode):
    """Records when it ran, then echoes its tag."""

    class Inputs(BaseModel):
        path: str
        tag: str

    class Outputs(BaseModel):
        tag: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        stamp(self.inputs.path, self.inputs.tag)
        return self.Outputs(tag=self.inputs.tag)


class FlakyStamp(BaseNode):
    """Records each start, and fails while it has run at most `times` times."""

    class Inputs(BaseModel):
        path: str
        times: str

    class Outputs(BaseModel):
        calls: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        calls = stamp(self.inputs.path)
        if calls <= int(self.inputs.times):
            raise RuntimeError(f"flaky stamp failure {calls}")
        return self.Outputs(calls=str(calls))


class Strict(BaseNode):
    """Its input must be digits: anything else is a pydantic validation error of `Inputs`."""

    class Inputs(BaseModel):
        number: str = Field(pattern=r"^[0-9]+$")
        path: str

    class Outputs(BaseModel):
        number: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        stamp(self.inputs.path)
        return self.Outputs(number=self.inputs.number)


class Gate(BaseNode):
    """Fails unless the file `flag` exists; then sleeps `seconds` and echoes `item`."""

    class Inputs(BaseModel):
        item: str
        flag: str
        seconds: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        if not Path(self.inputs.flag).exists():
            raise RuntimeError(f"gate {self.inputs.item} is closed")
        time.sleep(float(self.inputs.seconds))
        return self.Outputs(item=self.inputs.item)


NODES = [*shared.NODES, Stamp, FlakyStamp, Strict, Gate]
