"""Scenario 5: races. 1,000 branches finishing at once under one unite; two beats firing the same cron times.

The unite is a counting barrier: each finishing branch decrements its scope in the same transaction that
records it, and the transaction that empties the scope inserts the unite state under a unique fingerprint.
With 2 worker processes x 4 pool processes finishing branches concurrently there must be exactly one unite
state, gathering all 1,000 outputs in fan-out order.

Cron: tests/test_time_and_beat.py already runs two real beat processes across a minute boundary; here is
the cheap, sharper variant: two processes fire the same window of cron times at the same instant.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

from exo_celery import CronTrigger, GraphNodeModel
from exo_celery.cron import fire_times

from ..support import ROOT, Stack, run, uid
from .harness import (
    Figures,
    Ledger,
    PrivateRedis,
    check_fan_run,
    deliveries,
    effect_lines,
    fan_graph,
    scan_secrets,
    soak,
    start_workers,
    upsert,
)

WIDTH = 1000


def test_thousand_branches_one_unite(fstack: Stack, private_redis: PrivateRedis, figures: Figures) -> None:
    """No beat here: nothing is lost, so every state runs from its first message (no sweep re-sends)."""
    ns = uid("race")
    ledger = Ledger(fstack.database_url or "")
    upsert(fstack, ns, "fan", fan_graph(WIDTH, "${{ store.path }}", ms=0), store_config={"required_keys": ["path"]})
    workers = start_workers(fstack, ns, 2, concurrency=4)
    m = fstack.manager(ns)
    runs = soak(1)
    run_ids = []
    started = time.monotonic()
    for k in range(runs):
        run_ids.append(run(m.trigger("fan", store={"path": str(fstack.home / f"effects-{k}")}))["run_id"])
    statuses = ledger.wait_runs(run_ids, timeout=180)
    elapsed = time.monotonic() - started
    checks = [check_fan_run(ledger, r, WIDTH) for r in run_ids]
    lines = [effect_lines(fstack.home / f"effects-{k}") for k in range(runs)]
    pids = {line.split()[2] for k in range(runs) for line in (fstack.home / f"effects-{k}").read_text().splitlines()}
    # How close together the last branches finished (they race for the scope's last decrement).
    last = ledger.rows(
        "SELECT updated_at FROM exo_states WHERE run_id = %s AND identifier = 'work' ORDER BY updated_at DESC LIMIT 8",
        (run_ids[0],),
    )
    received, claimed = deliveries(workers)
    figures.record(
        "5-unite-race",
        runs=runs,
        branches_per_run=WIDTH,
        worker_processes=2,
        concurrency_each=4,
        pool_processes_that_ran_branches=len(pids),
        last_8_branches_finished_within_ms=round((last[0][0] - last[-1][0]) * 1000, 1),
        unite_states_per_run=sorted({c.unites for c in checks}),
        gathered_values=[json.loads(json.loads(v)["values"]).__len__() for v in _gathered(ledger, run_ids)],
        states_lost=sum(c.lost for c in checks),
        effects_duplicated_in_ledger=sum(c.duplicated for c in checks),
        node_executions_repeated=sum(sum(c.values()) - len(c) for c in lines),
        messages_received=received,
        states_claimed=claimed,
        seconds=round(elapsed, 1),
    )
    assert set(statuses.values()) == {"SUCCESS"}
    bad = [c for c in checks if not c.ok]
    assert not bad, bad
    assert all(set(c.values()) == {1} and len(c) == WIDTH for c in lines), "each branch ran exactly once"
    assert len(pids) >= 4, "branches ran in parallel on several pool processes"
    scan = scan_secrets(fstack, run_ids=run_ids, namespace=ns, redis_client=private_redis.client())
    assert not scan.found, f"the secret leaked into {scan.found}"


def _gathered(ledger: Ledger, run_ids: list[str]) -> list[str]:
    return [
        r[0]
        for r in ledger.rows(
            "SELECT outputs::text FROM exo_states WHERE run_id = ANY(%s) AND identifier = 'gather'", (run_ids,)
        )
    ]


_FIRE = """
import json, sys, time
from exo_celery.beat import Beat
from exo_celery.settings import load_settings
beat = Beat(load_settings())
beat.cron_checked = float(sys.argv[1])
at = float(sys.argv[2])
while time.time() < at:
    time.sleep(0.001)
print(json.dumps({"fired": beat.fire_crons(float(sys.argv[3]))}))
"""


def test_two_beats_fire_each_cron_time_once(fstack: Stack, figures: Figures) -> None:
    """Two beat processes fire the same window (the last few minutes) at the same instant."""
    ns = uid("cron")
    minutes = 4 * soak(1)
    upsert(
        fstack,
        ns,
        "tick",
        [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "tick"})],
        triggers=[CronTrigger(expression="* * * * *")],
    )
    now = time.time()
    since = now - minutes * 60 - 1
    expected = fire_times("* * * * *", datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(now, UTC))
    go = time.time() + 4.0  # both processes are up by then; they fire together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRE, str(since), str(go), str(now)],
            cwd=ROOT,
            env=fstack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    fired = [json.loads(out.strip().splitlines()[-1])["fired"] for out, _ in outputs]
    ledger = Ledger(fstack.database_url or "")
    keys = [r[0] for r in ledger.rows("SELECT cron_key FROM exo_runs WHERE namespace = %s", (ns,))]
    figures.record(
        "5-cron-race",
        beat_processes=2,
        cron_times_in_window=len(expected),
        fired_per_process=fired,
        runs_created=len(keys),
        cron_times_fired_twice=len(keys) - len(set(keys)),
    )
    assert sum(fired) == len(expected) == len(keys) == len(set(keys)), (fired, expected, keys)
