"""Scenario 3: the ledger database drops every connection mid-run, repeatedly, then refuses new ones.

The shared PostgreSQL cluster is never restarted: instead every backend connected to this test's
private database is terminated (pg_terminate_backend, as a restart does to its clients) every 0.2 s
for a few seconds, then the database refuses connections for a while (ALLOW_CONNECTIONS false) while
being emptied again. Workers and the beat must reconnect by themselves; every run ends SUCCESS; no
state is half-written (every run, scope and state counter consistent; every effect once in the ledger).
"""

from __future__ import annotations

import time

import psycopg

from ..support import POSTGRES_ADMIN_URL, Stack, run
from .harness import (
    Figures,
    PrivateRedis,
    RecoveryClock,
    check_fan_run,
    deliveries,
    fan_scenario,
    scan_secrets,
    soak,
    summary,
    wait_until,
)

WIDTH = 200
STORM_SECONDS = 2.0
REFUSE_SECONDS = 1.5


class Saboteur:
    """Terminates the backends of one database (never our own admin connection)."""

    def __init__(self, database_url: str) -> None:
        self.name = database_url.rsplit("/", 1)[1]
        self.admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
        self.terminated = 0

    def terminate(self) -> int:
        rows = self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        ).fetchall()
        self.terminated += len(rows)
        return len(rows)

    def allow_connections(self, allow: bool) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {"true" if allow else "false"}')

    def close(self) -> None:
        try:
            self.allow_connections(True)
        finally:
            self.admin.close()


def test_database_connections_killed_and_refused_mid_run(
    fstack: Stack, private_redis: PrivateRedis, figures: Figures
) -> None:
    rounds = soak(2)
    scenario = fan_scenario(fstack, "db", WIDTH, ms=60)
    ns, ledger, m = scenario.namespace, scenario.ledger, scenario.manager
    workers, beat = scenario.workers, scenario.beat
    saboteur = Saboteur(fstack.database_url or "")
    clock = RecoveryClock(fstack.database_url or "")
    run_ids: list[str] = []
    storms = refusals = 0
    started = time.monotonic()
    try:
        for k in range(rounds):
            run_ids.append(run(m.trigger("fan", store={"path": str(fstack.home / f"effects-{k}")}))["run_id"])
            wait_until(lambda r=run_ids[-1]: scenario.work_done(r) >= 20, 60, "20 branches done")
            clock.fault(run_ids)
            # Every connection killed, again and again (as clients see a restart).
            storm_end = time.monotonic() + STORM_SECONDS
            while time.monotonic() < storm_end:
                saboteur.terminate()
                time.sleep(0.2)
            storms += 1
            # Then no connection at all for a while (a database that is down).
            saboteur.allow_connections(False)
            refuse_end = time.monotonic() + REFUSE_SECONDS
            while time.monotonic() < refuse_end:
                saboteur.terminate()
                time.sleep(0.2)
            saboteur.allow_connections(True)
            refusals += 1
    finally:
        saboteur.close()
    ledger.close()  # our own connection was terminated too
    statuses = ledger.wait_runs(run_ids, timeout=120)
    recovery = clock.stop()

    checks = [check_fan_run(ledger, r, WIDTH) for r in run_ids]
    received, claimed = deliveries(workers)
    half_written = ledger.value(
        """SELECT count(*) FROM exo_states s WHERE s.run_id = ANY(%s) AND (
               (s.status = 'SUCCESS' AND s.identifier <> 'gather' AND s.outputs IS NULL)
            OR (s.status = 'QUEUED') OR (s.lease_token IS NOT NULL AND s.status <> 'QUEUED'))""",
        (run_ids,),
    )
    figures.record(
        "3-database-loss",
        runs=len(run_ids),
        connection_storms=storms,
        seconds_per_storm=STORM_SECONDS,
        refusal_windows=refusals,
        seconds_refused_each=REFUSE_SECONDS,
        backends_terminated=saboteur.terminated,
        runs_success=sum(1 for c in checks if c.status == "SUCCESS"),
        states_lost=sum(c.lost for c in checks),
        effects_duplicated_in_ledger=sum(c.duplicated for c in checks),
        states_half_written=half_written,
        messages_received=received,
        states_claimed=claimed,
        recovery_seconds=summary(recovery),
        recovery_seconds_after_the_database_was_back=summary(
            [max(0.0, t - STORM_SECONDS - REFUSE_SECONDS) for t in recovery]
        ),
        seconds_total=round(time.monotonic() - started, 1),
    )
    assert set(statuses.values()) == {"SUCCESS"}, statuses
    bad = [c for c in checks if not c.ok]
    assert not bad, bad[:3]
    assert half_written == 0
    assert saboteur.terminated > 0
    assert all(w.popen.poll() is None for w in workers), "a worker died with the database"
    assert beat.popen.poll() is None, "the beat died with the database"

    scan = scan_secrets(fstack, run_ids=run_ids, namespace=ns, redis_client=private_redis.client())
    assert not scan.found, f"the secret leaked into {scan.found}"
