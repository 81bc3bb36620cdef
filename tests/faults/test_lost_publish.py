"""Issue 13 item 16: a publish that fails once must not leave a run to beat's sweep.

`tests/test_contract.py::test_unite_race_200_branches_on_two_worker_processes_gives_one_unite` once
stayed RUNNING for 120 s. It starts no beat, so a state committed QUEUED whose message never reached
Redis waits for ever. `publish` did exactly that on any broker error: it logged "left for beat to
re-send" (a failed pipeline, a connection reset) or, for an error kombu does not count as a
connection error, raised after the commit. Either way the children were never sent.

Here the private Redis refuses writes (`maxmemory 1`, OOM) for about a second at the moment a state
completes and publishes its child. No beat runs: the run must still end, because the worker sends
the message again once Redis accepts it.
"""

from __future__ import annotations

import time

from exo_celery import GraphNodeModel, UnitesModel

from ..support import Stack, run, uid
from .harness import Ledger, PrivateRedis, start_workers, upsert, wait_until


def test_a_failed_publish_is_sent_again_without_beat(fstack: Stack, private_redis: PrivateRedis) -> None:
    ns = uid("lost")
    ledger = Ledger(fstack.database_url or "")
    path = str(fstack.home / "effects")
    graph = [
        GraphNodeModel(
            node_name="Work", identifier="slow", inputs={"item": "root", "path": path, "ms": "1500"}, next_nodes=["fan"]
        ),
        GraphNodeModel(node_name="FanOut", identifier="fan", inputs={"n": "20"}, next_nodes=["work"]),
        GraphNodeModel(
            node_name="Work",
            identifier="work",
            inputs={"item": "${{ fan.outputs.item }}", "path": path, "ms": "0"},
            next_nodes=["gather"],
        ),
        GraphNodeModel(
            node_name="Gather",
            identifier="gather",
            inputs={"values": "${{ work.outputs.item }}"},
            unites=UnitesModel(identifier="fan"),
        ),
    ]
    upsert(fstack, ns, "g", graph)
    start_workers(fstack, ns, 1, concurrency=1)
    run_id = run(fstack.manager(ns).trigger("g"))["run_id"]

    def state_of(identifier: str) -> str | None:
        return ledger.value(
            "SELECT status FROM exo_states WHERE run_id = %s AND identifier = %s", (run_id, identifier)
        )

    redis = private_redis.client()
    wait_until(
        lambda: ledger.value("SELECT lease_until FROM exo_states WHERE run_id = %s AND identifier = 'slow'", (run_id,)),
        30,
        "the slow root claimed",
    )
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", "1")  # every write is refused (OOM) from now on
    try:
        wait_until(lambda: state_of("slow") == "SUCCESS", 30, "the slow root recorded")
        assert state_of("fan") == "QUEUED"  # committed; its message could not be written
        time.sleep(1.0)  # the outage: the worker's publish keeps failing meanwhile
    finally:
        redis.config_set("maxmemory", "0")
    assert ledger.wait_runs([run_id], timeout=30)[run_id] == "SUCCESS"
    assert ledger.value("SELECT count(*) FROM exo_states WHERE run_id = %s AND identifier = 'gather'", (run_id,)) == 1
    ledger.close()
