"""Issue 13 item 10: two writers of the same new store key at once on PostgreSQL.

The store write was an UPDATE then an INSERT. When another transaction had inserted the same new key
and not committed yet, the UPDATE saw no row, the INSERT waited on the primary key, and the other
commit turned it into `UniqueViolation exo_store_pkey`: a non-retryable ERRORED state and a FAILED run.

The interleaving is forced: the test is the other writer. It inserts the key in a transaction it
holds open, waits until the worker's write is blocked behind it (pg_stat_activity), then commits.
"""

from __future__ import annotations

import psycopg

from exo_celery import GraphNodeModel

from ..support import Stack, run, uid
from .harness import Ledger, wait_until


def test_same_new_key_written_concurrently(fresh_pg: Stack) -> None:
    ns = uid("store")
    fresh_pg.start_worker(ns, concurrency=1)
    m = fresh_pg.manager(ns)
    graph = [GraphNodeModel(node_name="StoreWrite", identifier="w", inputs={"key": "k", "value": "from-state"})]
    run(m.upsert_graph("race", graph))
    run_id = run(m.trigger("race", start_delay=1500))["run_id"]
    ledger = Ledger(fresh_pg.database_url or "")
    with psycopg.connect(fresh_pg.database_url or "") as other:  # one transaction, held open
        other.execute("INSERT INTO exo_store (run_id, key, value) VALUES (%s, 'k', 'from-other')", (run_id,))
        wait_until(
            lambda: ledger.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE '%%exo_store%%'"
            ),
            60,
            "the worker's store write blocked behind the other writer",
        )
        other.commit()
    assert ledger.wait_runs([run_id], timeout=60) == {run_id: "SUCCESS"}
    state = ledger.rows("SELECT status, error FROM exo_states WHERE run_id = %s", (run_id,))
    assert state == [("SUCCESS", None)]
    # Both writes happened; the later one (the state's) is the value kept.
    assert ledger.value("SELECT value FROM exo_store WHERE run_id = %s AND key = 'k'", (run_id,)) == "from-state"
    ledger.close()
