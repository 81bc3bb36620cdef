"""Nodes the integration tests run; importable by worker processes as `tests.nodes`."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from exo_celery import BaseNode, PruneSignal, ReQueueAfterSignal


def bump(path: str) -> int:
    """Count calls across processes with a file (tests read it to count executions)."""
    p = Path(path)
    with p.open("a") as f:
        f.write("x")
    return p.stat().st_size


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


class Split(BaseNode):
    """Fan-out: one output per item of a JSON list ([] gives no outputs)."""

    class Inputs(BaseModel):
        items: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in json.loads(self.inputs.items)]


class Upper(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        result: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(result=self.inputs.item.upper() + "!")


class Merge(BaseNode):
    class Inputs(BaseModel):
        a: str
        b: str

    class Outputs(BaseModel):
        merged: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs(merged=f"{self.inputs.a}+{self.inputs.b}")


class Collect(BaseNode):
    """A uniting node: counts a gathered JSON array."""

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


class StoreWrite(BaseNode):
    class Inputs(BaseModel):
        key: str
        value: str

    class Outputs(BaseModel):
        seen: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        before = self.store.get(self.inputs.key, "")
        self.store[self.inputs.key] = self.inputs.value
        return self.Outputs(seen=before)


class StoreWriteThenFail(BaseNode):
    class Inputs(BaseModel):
        key: str

    class Outputs(BaseModel):
        ok: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        self.store.set(self.inputs.key, "should-not-persist")
        raise RuntimeError("failed after writing the store")


class UseSecret(BaseNode):
    class Inputs(BaseModel):
        mode: str

    class Outputs(BaseModel):
        length: str

    class Secrets(BaseModel):
        api_key: str

    async def execute(self) -> Outputs:
        if self.inputs.mode == "leak-error":
            raise ValueError(f"bad key {self.secrets.api_key}")
        if self.inputs.mode == "leak-output":
            return self.Outputs(length=f"key={self.secrets.api_key}")
        if self.inputs.mode == "leak-store":
            self.store["token"] = f"key={self.secrets.api_key}"
            self.store["plain"] = "visible-value"
            return self.Outputs(length="stored")
        return self.Outputs(length=str(len(self.secrets.api_key)))


class Fail(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        raise ValueError(f"always fails: {self.inputs.text}")


class Flaky(BaseNode):
    """Fails while it has run at most `times` times (counted in the file `path`)."""

    class Inputs(BaseModel):
        path: str
        times: str

    class Outputs(BaseModel):
        calls: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        calls = bump(self.inputs.path)
        if calls <= int(self.inputs.times):
            raise RuntimeError(f"flaky failure {calls}")
        return self.Outputs(calls=str(calls))


class Prune(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        result: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        if self.inputs.item.startswith("p"):
            raise PruneSignal({"reason": f"pruned {self.inputs.item}"})
        if self.inputs.item.startswith("x"):
            raise ValueError(f"bad item {self.inputs.item}")
        return self.Outputs(result=self.inputs.item)


class Poll(BaseNode):
    """Requeues itself `times` times after `delay_ms`, then succeeds (counted in `path`)."""

    class Inputs(BaseModel):
        path: str
        times: str
        delay_ms: str

    class Outputs(BaseModel):
        calls: str
        at: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        calls = bump(self.inputs.path)
        with open(self.inputs.path + ".times", "a") as f:
            f.write(f"{time.time()}\n")
        if calls <= int(self.inputs.times):
            raise ReQueueAfterSignal(timedelta(milliseconds=int(self.inputs.delay_ms)))
        return self.Outputs(calls=str(calls), at=str(time.time()))


class Sleep(BaseNode):
    """Sleeps, recording each start in `path` (with the worker's pid)."""

    class Inputs(BaseModel):
        seconds: str
        path: str

    class Outputs(BaseModel):
        slept: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        with open(self.inputs.path, "a") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
        time.sleep(float(self.inputs.seconds))
        return self.Outputs(slept=self.inputs.seconds)


class Count(BaseNode):
    """Records each execution in `path` and echoes its item."""

    class Inputs(BaseModel):
        item: str
        path: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        with open(self.inputs.path, "a") as f:
            f.write(self.inputs.item + "\n")
        return self.Outputs(item=self.inputs.item)


class Nothing(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        pass

    class Secrets(BaseModel):
        pass

    def execute(self) -> None:
        return None


class WrongOutput(BaseNode):
    class Inputs(BaseModel):
        mode: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> object:
        if self.inputs.mode == "big":
            return self.Outputs(text="x" * 2_000_000)
        return "not an Outputs"


NODES = [
    Echo,
    Split,
    Upper,
    Merge,
    Collect,
    StoreWrite,
    StoreWriteThenFail,
    UseSecret,
    Fail,
    Flaky,
    Prune,
    Poll,
    Sleep,
    Count,
    Nothing,
    WrongOutput,
]
