"""Nodes for the clock-skew tests: tests.nodes' nodes, plus one that runs until the test releases it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from exo_celery import BaseNode

from .nodes import NODES as BASE_NODES


class Hold(BaseNode):
    """Records each start in `path` (`<pid>`), then runs until the file `release` exists (at most 120 s)."""

    class Inputs(BaseModel):
        path: str
        release: str

    class Outputs(BaseModel):
        held: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        with open(self.inputs.path, "a") as f:
            f.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120
        while not Path(self.inputs.release).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.Outputs(held="yes")


NODES = [*BASE_NODES, Hold]
