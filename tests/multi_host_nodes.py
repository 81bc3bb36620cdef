"""Nodes of the multi-host test (tests/test_multi_host.py), importable on every worker host.

They share nothing on disk: executions are counted in Redis (the ledger host's, reached through the
graph's secret `counter_url`, which only decrypts with the shared EXO_SECRETS_KEY), and each output
names the host (UTS hostname) that produced it.
"""

from __future__ import annotations

import json
import socket
import time

import redis
from pydantic import BaseModel

from exo_celery import BaseNode


def counters(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5)


class Fan(BaseNode):
    """Fan-out: `width` outputs, one per branch."""

    class Inputs(BaseModel):
        width: str

    class Outputs(BaseModel):
        item: str

    class Secrets(BaseModel):
        pass

    def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.width))]


class Branch(BaseNode):
    """Counts its start in Redis (hash `<tag>:starts`, field = item), works `seconds`, names its host.

    On host `park_on`, every branch after its first `park_after` parks instead (added to the set
    `<tag>:parked`, then asleep for a minute): the test kills that host while those states run.
    """

    class Inputs(BaseModel):
        item: str
        tag: str
        seconds: str
        park_on: str
        park_after: str

    class Outputs(BaseModel):
        item: str
        host: str

    class Secrets(BaseModel):
        counter_url: str

    def execute(self) -> Outputs:
        tag, item, host = self.inputs.tag, self.inputs.item, socket.gethostname()
        r = counters(self.secrets.counter_url)
        r.hincrby(f"{tag}:starts", item, 1)
        if host == self.inputs.park_on and r.incr(f"{tag}:started:{host}") > int(self.inputs.park_after):
            r.sadd(f"{tag}:parked", item)
            time.sleep(60)  # the host is killed long before
        time.sleep(float(self.inputs.seconds))
        return self.Outputs(item=item, host=host)


class Unite(BaseNode):
    """Unites the fan: counts its own executions in Redis (`<tag>:unite`) and the gathered items."""

    class Inputs(BaseModel):
        items: str
        tag: str

    class Outputs(BaseModel):
        count: str
        items: str
        host: str

    class Secrets(BaseModel):
        counter_url: str

    def execute(self) -> Outputs:
        counters(self.secrets.counter_url).incr(f"{self.inputs.tag}:unite")
        items = json.loads(self.inputs.items)
        return self.Outputs(count=str(len(items)), items=json.dumps(items), host=socket.gethostname())


NODES = [Fan, Branch, Unite]
