"""The client host of tests/test_multi_host.py: `python -m tests.multi_host_client WIDTH PARK_AFTER PARKED SECONDS`.

Runs on its own host (network namespace) with only EXO_* settings pointing at the ledger host. It
waits until both worker hosts' runtimes are live, upserts fan(WIDTH) -> branch -> unite (with the
secret `counter_url`), triggers it, prints `kill-now` once PARKED branches are parked on w1 (see
tests/multi_host_nodes.Branch), waits for the run to end and prints one `summary {json}` line for the
test to check. Every wait polls the ledger (or the counters) with a deadline.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import redis

from exo_celery import GraphNodeModel, StateManager, UnitesModel

NS = "hosts"
T = TypeVar("T")


def say(*parts: object) -> None:
    print(*parts, flush=True)


def poll(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout} s")
        time.sleep(interval)


def graph(width: int, tag: str, seconds: str, park_after: int) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Fan", identifier="fan", inputs={"width": str(width)}, next_nodes=["branch"]),
        GraphNodeModel(
            node_name="Branch",
            identifier="branch",
            inputs={
                "item": "${{ fan.outputs.item }}",
                "tag": tag,
                "seconds": seconds,
                "park_on": "w1",
                "park_after": str(park_after),
            },
            next_nodes=["unite"],
        ),
        GraphNodeModel(
            node_name="Unite",
            identifier="unite",
            inputs={"items": "${{ branch.outputs.item }}", "tag": tag},
            unites=UnitesModel(identifier="fan"),
        ),
    ]


def live_hosts(m: StateManager) -> set[str]:
    return {r["host"] for r in m.runtimes.list_runtimes(NS) if r["live"]}


def main(width: int, park_after: int, parked: int, seconds: str) -> None:
    m = StateManager(NS, validation_timeout=60)
    counter_url = os.environ["EXO_TEST_COUNTER_URL"]
    counters = redis.Redis.from_url(counter_url, socket_connect_timeout=5)
    hosts = poll(lambda: live_hosts(m) >= {"w1", "w2"} and live_hosts(m), 60, "runtimes on w1 and w2")
    say("runtimes", json.dumps(sorted(hosts)))
    tag, name = f"t{uuid.uuid4().hex[:8]}", "fan-unite"
    m.upsert_graph_sync(name, graph(width, tag, seconds, park_after), secrets={"counter_url": counter_url})
    started = time.monotonic()
    run_id = m.trigger_sync(name)["run_id"]
    say("triggered", run_id)
    poll(lambda: counters.scard(f"{tag}:parked") >= parked, 60, f"{parked} branches parked on w1", interval=0.05)
    done = [s for s in m.list_states_sync(run_id) if s["identifier"] == "branch" and s["status"] == "SUCCESS"]
    say("kill-now", json.dumps({"branches_done": len(done), "after": round(time.monotonic() - started, 2)}))
    final = m.wait_sync(run_id, timeout=120)
    ended = time.monotonic()
    poll(lambda: "w1" not in live_hosts(m), 30, "the runtime of the dead host w1 to go stale")
    starts = {int(k): int(v) for k, v in counters.hgetall(f"{tag}:starts").items()}
    summary = {
        "run": final,
        "states": m.list_states_sync(run_id),
        "branch_starts": starts,
        "unite_runs": int(counters.get(f"{tag}:unite") or 0),
        "parked": sorted(int(i) for i in counters.smembers(f"{tag}:parked")),
        "live_hosts": sorted(live_hosts(m)),
        "seconds": round(ended - started, 2),
    }
    say("summary", json.dumps(summary, default=str))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
