"""Nodes of the execution-model tests (concurrency, pools, cancel); importable by workers as `tests.execution_nodes`.

Each records what it did in files named by its inputs, so tests wait on files and the ledger, not on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from exo_celery import BaseNode


def note(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


def lines(path: str) -> int:
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


class Fan(BaseNode):
    """The root: `n` empty outputs (a fan-out of `n` children)."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        i: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(i=str(i)) for i in range(int(self.inputs.n))]


class Gather(BaseNode):
    """Async: records its pid and thread, then waits until `n` executions have arrived (all at once, or it fails)."""

    class Inputs(BaseModel):
        path: str
        n: str
        i: str = ""

    class Outputs(BaseModel):
        pid: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        note(self.inputs.path, f"{os.getpid()} {threading.get_ident()}")
        deadline = time.monotonic() + 30
        while lines(self.inputs.path) < int(self.inputs.n):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {lines(self.inputs.path)} executions at once")
            await asyncio.sleep(0.05)
        return self.Outputs(pid=str(os.getpid()))


class SyncGather(Gather):
    """The same as a plain `def` node (it blocks its thread while waiting)."""

    def execute(self) -> Gather.Outputs:  # type: ignore[override]
        note(self.inputs.path, f"{os.getpid()} {threading.get_ident()}")
        deadline = time.monotonic() + 30
        while lines(self.inputs.path) < int(self.inputs.n):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {lines(self.inputs.path)} executions at once")
            time.sleep(0.05)
        return self.Outputs(pid=str(os.getpid()))


class AsyncWait(BaseNode):
    """Async: notes its start in `started`, awaits `seconds`, then notes `done` (a cancelled one never does)."""

    class Inputs(BaseModel):
        seconds: str
        started: str
        done: str
        i: str = ""

    class Outputs(BaseModel):
        ok: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        note(self.inputs.started, f"{os.getpid()} {time.time()}")
        await asyncio.sleep(float(self.inputs.seconds))
        note(self.inputs.done, f"{os.getpid()} {time.time()}")
        return self.Outputs(ok="yes")


class SyncWait(AsyncWait):
    """Sync: one blocking `time.sleep(seconds)` (prefork and solo interrupt it), then notes `done`."""

    def execute(self) -> AsyncWait.Outputs:  # type: ignore[override]
        note(self.inputs.started, f"{os.getpid()} {time.time()}")
        time.sleep(float(self.inputs.seconds))
        note(self.inputs.done, f"{os.getpid()} {time.time()}")
        return self.Outputs(ok="yes")


class SyncSteps(AsyncWait):
    """Sync, in 0.1 s steps of Python code (a `threads` pool stops it at its next instruction)."""

    def execute(self) -> AsyncWait.Outputs:  # type: ignore[override]
        note(self.inputs.started, f"{os.getpid()} {time.time()}")
        deadline = time.monotonic() + float(self.inputs.seconds)
        while time.monotonic() < deadline:
            time.sleep(0.1)
        note(self.inputs.done, f"{os.getpid()} {time.time()}")
        return self.Outputs(ok="yes")


class Touch(BaseNode):
    """Notes the time in `path`."""

    class Inputs(BaseModel):
        path: str
        i: str = ""

    class Outputs(BaseModel):
        at: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        note(self.inputs.path, str(time.time()))
        return self.Outputs(at=str(time.time()))


NODES = [Fan, Gather, SyncGather, AsyncWait, SyncWait, SyncSteps, Touch]
