"""Scenario 1: workers SIGKILLed at random moments during fan-out runs (200 branches and a unite).

Four prefork workers (concurrency 2) serve the namespace and one beat sweeps (lease 3 s, sweep 1 s).
Runs are triggered back to back; every 0.1-0.6 s (once at least two workers are ready, so the namespace
is never left without one) a random ready worker is killed with SIGKILL (its whole process group: the
main process and the pool children, mid-state) and a new one is started in its place.
Every run must end SUCCESS with every effect exactly once in the ledger: 200 fan outputs, 200 SUCCESS
work states on 200 distinct branches, one unite state gathering the 200 items in order.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from exo_celery import GraphNodeModel

from ..support import Proc, Stack, run, uid
from .harness import (
    FAULT_NODES,
    Figures,
    Ledger,
    PrivateRedis,
    RecoveryClock,
    beat_resent,
    check_fan_run,
    deliveries,
    effect_lines,
    fan_graph,
    pool_children,
    scan_secrets,
    soak,
    start_workers,
    summary,
    upsert,
)

WIDTH = 200
WORKERS = 4
TERMINAL = {"SUCCESS", "FAILED", "CANCELLED"}


def test_sigkill_workers_at_random_moments(fstack: Stack, private_redis: PrivateRedis, figures: Figures) -> None:
    seed = int(os.environ.get("EXO_FAULT_SEED", str(random.randrange(1_000_000))))
    rng = random.Random(seed)
    kills_wanted = soak(20)
    ns = uid("kill")
    ledger = Ledger(fstack.database_url or "")
    nodes: list[GraphNodeModel] = fan_graph(WIDTH, "${{ store.path }}", ms=0)
    upsert(fstack, ns, "fan", nodes, store_config={"required_keys": ["path"]})
    m = fstack.manager(ns)

    workers = start_workers(fstack, ns, WORKERS)
    beat = fstack.start_beat()
    clock = RecoveryClock(fstack.database_url or "")
    runs: list[tuple[str, str]] = []

    def trigger() -> None:
        path = str(fstack.home / f"effects-{len(runs)}")
        runs.append((run(m.trigger("fan", store={"path": path}))["run_id"], path))

    def active() -> list[str]:
        ids = [r for r, _ in runs]
        found = dict(ledger.rows("SELECT id, status FROM exo_runs WHERE id = ANY(%s)", (ids,)))
        return [r for r in ids if found.get(r) not in TERMINAL]

    trigger()
    killed: list[Proc] = []
    child_kills = 0
    in_flight: list[int] = []
    started = time.monotonic()
    # Keep going until the kills are spread over at least three runs (a loaded machine runs them slower).
    while len(killed) < kills_wanted or (len(runs) < 3 and time.monotonic() - started < 120):
        if not active():
            trigger()
        time.sleep(rng.uniform(0.1, 0.6))
        ready = [w for w in workers if w.popen.poll() is None and " ready." in w.text()]
        if len(ready) < 2:
            # Meanwhile, SIGKILL one pool process of a serving worker (as an OOM killer would): Celery
            # forks a new one and requeues the message (reject on worker lost); the lease decides.
            children = [pid for w in ready for pid in pool_children(w)]
            if children and child_kills < len(killed) // 4:
                in_flight.append(clock.fault(active()))
                os.kill(rng.choice(children), signal.SIGKILL)
                child_kills += 1
            continue
        victim = rng.choice(ready)
        in_flight.append(clock.fault(active()))
        victim.kill(signal.SIGKILL)
        killed.append(victim)
        workers.remove(victim)
        workers.append(fstack.start_worker(ns, FAULT_NODES, concurrency=2, wait=False))
    faults_over = time.monotonic()

    run_ids = [r for r, _ in runs]
    statuses = ledger.wait_runs(run_ids, timeout=120)
    drained = time.monotonic() - faults_over
    recovery = clock.stop()

    checks = [check_fan_run(ledger, r, WIDTH) for r in run_ids]
    executions = [effect_lines(Path(p)) for _, p in runs]
    re_executed = sum(sum(c.values()) - len(c) for c in executions)
    missing_effects = sum(WIDTH - len(c) for c in executions)
    received, claimed = deliveries(killed + workers)
    attempts_over_1 = ledger.value(
        "SELECT count(*) FROM exo_states WHERE run_id = ANY(%s) AND attempts > 1", (run_ids,)
    )
    figures.record(
        "1-worker-sigkill",
        seed=seed,
        runs=len(runs),
        states_per_run=2 * WIDTH + 1,
        kills=len(killed),
        pool_process_kills=child_kills,
        states_in_flight_at_kills=sum(in_flight),
        runs_success=sum(1 for c in checks if c.status == "SUCCESS"),
        states_lost=sum(c.lost for c in checks),
        effects_duplicated_in_ledger=sum(c.duplicated for c in checks),
        unite_states_per_run=sorted({c.unites for c in checks}),
        states_claimed_more_than_once=attempts_over_1,
        node_executions_repeated=re_executed,
        messages_received=received,
        messages_resent_by_sweep=beat_resent([beat])[1],
        states_claimed=claimed,
        recovery_seconds=summary(recovery),
        seconds_with_faults=round(faults_over - started, 1),
        seconds_to_finish_after_last_kill=round(drained, 1),
    )
    bad = [c for c in checks if not c.ok]
    assert not bad, f"seed {seed}: {bad[:3]}"
    assert set(statuses.values()) == {"SUCCESS"}
    assert missing_effects == 0, "every item ran at least once"
    assert len(killed) >= kills_wanted and len(runs) >= 3, "the kills were spread over several runs"

    scanned = time.monotonic()
    scan = scan_secrets(fstack, run_ids=run_ids, namespace=ns, redis_client=private_redis.client())
    assert not scan.found, f"the secret leaked into {scan.found}"
    print(f"secret scan: {time.monotonic() - scanned:.1f} s, {scan.scanned}")
