"""Nodes of the fault suite; importable by worker processes as `tests.faults.nodes`.

Every node that does work appends one line per execution to a file named in its inputs, so a test can
tell how many times each item really ran (the ledger says how many times it *counted*).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import UTC, datetime

from pydantic import BaseModel

from exo_celery import BaseNode, PruneSignal


def append(path: str, line: str) -> None:
    """One line, written with a single `write` so concurrent processes do not interleave."""
    with open(path, "a") as f:
        f.write(line + "\n")


class FanOut(BaseNode):
    """Fan-out: `n` outputs, items i0000, i0001, ... (the secret is required, so it travels everywhere)."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        api_key: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=f"i{k:04d}") for k in range(int(self.inputs.n))]


class Work(BaseNode):
    """Sleeps `ms`, then records `<item> <process group> <pid>` in `path`; outputs who ran it."""

    class Inputs(BaseModel):
        item: str
        path: str
        ms: str

    class Outputs(BaseModel):
        item: str
        pgid: str

    class Secrets(BaseModel):
        api_key: str

    def execute(self) -> Outputs:
        if float(self.inputs.ms) > 0:
            time.sleep(float(self.inputs.ms) / 1000.0)
        append(self.inputs.path, f"{self.inputs.item} {os.getpgrp()} {os.getpid()}")
        return self.Outputs(item=self.inputs.item, pgid=str(os.getpgrp()))


class Hold(BaseNode):
    """Records a start line, holds `seconds`, then records the effect line: a kill while holding leaves no effect."""

    class Inputs(BaseModel):
        item: str
        path: str
        seconds: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        append(self.inputs.path + ".starts", f"{self.inputs.item} {os.getpid()} {time.time()}")
        time.sleep(float(self.inputs.seconds))
        append(self.inputs.path, self.inputs.item)
        return self.Outputs(item=self.inputs.item)


class Gather(BaseNode):
    """A uniting node: counts the gathered JSON array and keeps it."""

    class Inputs(BaseModel):
        values: str

    class Outputs(BaseModel):
        count: str
        values: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        import json

        values = json.loads(self.inputs.values)
        return self.Outputs(count=str(len(values)), values=json.dumps(values))


class Parse(BaseNode):
    """Parses `text` as an integer; the error quotes the raw text (a NUL byte in it reaches the error text)."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        value: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        text = self.inputs.text
        if not text.isdigit():
            raise ValueError(f"cannot parse '{text}' as an integer")
        return self.Outputs(value=text)


class StoreRaw(BaseNode):
    """Writes `value` (given as code points, so the graph stays plain text) to the run's store."""

    class Inputs(BaseModel):
        key: str
        codepoints: str

    class Outputs(BaseModel):
        ok: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        value = "".join(chr(int(c)) for c in self.inputs.codepoints.split(","))
        self.store[self.inputs.key] = value
        return self.Outputs(ok="yes")


class PruneWithTime(BaseNode):
    """Prunes with a datetime in its data (Exosphere's PruneSignal takes any dict)."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        raise PruneSignal({"reason": self.inputs.text, "at": datetime.now(UTC)})


class Echo(BaseNode):
    """Echoes `text`, with the process group that ran it (namespace isolation)."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str
        pgid: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text, pgid=str(os.getpgrp()))


class Leak(BaseNode):
    """Uses the secret; `mode` = ok | error (the secret in an exception) | output (the secret in an output)
    | store (the secret written to the store) | keyerror (`KeyError(secret)`) | print (printed and logged)."""

    class Inputs(BaseModel):
        mode: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        api_key: str

    def execute(self) -> Outputs:
        key = self.secrets.api_key
        if self.inputs.mode == "error":
            raise ValueError(f"upstream refused key {key}")
        if self.inputs.mode == "output":
            return self.Outputs(text=f"key={key}")
        if self.inputs.mode == "store":  # the next state reads it with ${{ store.tok }}
            self.store["tok"] = key
            self.store["tok_repr"] = repr(key)
        if self.inputs.mode == "keyerror":  # str(KeyError(key)) is repr(key): escaped if key has a newline
            raise KeyError(key)
        if self.inputs.mode == "print":  # Celery redirects a pool process's stdout to its log
            print(f"printed-marker {key}")
            print(f"printed-marker-repr {key!r}")
            logging.getLogger("tests.faults.leak").warning("logged-marker %s", key)
            sys.stderr.write(f"stderr-marker {key}\n")
        return self.Outputs(text=str(len(key)))


class Bad(BaseNode):
    """Returns the wrong thing: `mode` = big (2 MB) | type (a str) | list-of-junk | dict-extra | ok."""

    class Inputs(BaseModel):
        mode: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> object:
        mode = self.inputs.mode
        if mode == "big":
            return self.Outputs(text="x" * 2_000_000)
        if mode == "many":  # each output small, together over the limit
            return [self.Outputs(text="y" * 100_000) for _ in range(12)]
        if mode == "type":
            return "not an Outputs"
        if mode == "list-of-junk":
            return [self.Outputs(text="fine"), 42]
        if mode == "dict-missing":
            return {"nope": "x"}
        return self.Outputs(text="ok")


class Sized(BaseNode):
    """Outputs `n` characters (rendered inputs of its children can grow past EXO_MAX_INPUT_BYTES)."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> Outputs:
        return self.Outputs(text="z" * int(self.inputs.n))


NODES = [FanOut, Work, Hold, Gather, Parse, StoreRaw, PruneWithTime, Echo, Leak, Bad, Sized]
