"""Issue 13, item 12: a process with the wrong EXO_SECRETS_KEY used to leave runs RUNNING for ever.

The ledger keeps a fingerprint of the key (an HMAC, never the key). A worker or beat whose key does
not match refuses to start, saying why; a client cannot store secrets the workers could not read; and
a state that still meets a graph its worker cannot decrypt is ERRORED with that reason, at once.
"""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from exo_celery import ConfigError, GraphNodeModel
from exo_celery.crypto import encrypt_secrets
from exo_celery.ledger.repo import Repo

from ..support import SECRETS_KEY, Stack, run, uid
from .harness import SECRET, Ledger, register, start_workers

WRONG = Fernet.generate_key().decode()
MESSAGE = "cannot be decrypted with this EXO_SECRETS_KEY"
LEAK = [GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "ok"})]


def test_processes_with_another_key_refuse_to_start(fstack: Stack) -> None:
    ns = uid("key")
    register(fstack, ns)
    run(fstack.manager(ns).upsert_graph("g", LEAK, secrets={"api_key": SECRET}))
    from exo_celery.crypto import key_fingerprint

    ledger = Ledger(fstack.database_url or "")
    stored = ledger.rows("SELECT key, value FROM exo_meta")
    assert stored == [("secrets_key_fingerprint", key_fingerprint(SECRETS_KEY.encode()))]
    assert SECRETS_KEY not in json.dumps(stored)

    wrong = {"EXO_SECRETS_KEY": WRONG}
    procs = [
        fstack.start_worker(ns, "tests.faults.nodes:NODES", env=wrong, wait=False),
        fstack.start_beat(wrong, False),
    ]
    for proc in procs:
        assert proc.popen.wait(timeout=60) != 0, proc.text()[-2000:]
        assert MESSAGE in proc.text() and "Traceback" not in proc.text(), proc.text()[-2000:]

    before = ledger.table_counts()
    with pytest.raises(ConfigError, match=MESSAGE):
        fstack.manager(ns, secrets_key=WRONG).upsert_graph_sync("g2", LEAK, {"api_key": "x"})
    assert ledger.table_counts() == before

    # The right key still starts and runs.
    start_workers(fstack, ns, 1)
    m = fstack.manager(ns)
    run_id = run(m.trigger("g"))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"


def test_a_state_of_a_graph_its_worker_cannot_decrypt_is_errored_at_once(fstack: Stack) -> None:
    ns = uid("key")
    register(fstack, ns)
    m = fstack.manager(ns)
    run(m.upsert_graph("g", LEAK, secrets={"api_key": SECRET}, retry_policy={"max_retries": 3}))
    repo = Repo(m.settings.ledger_url)
    row = repo.load_graph(ns, "g")
    assert row is not None
    # A version encrypted under another key (written past the client's check, as an older release could).
    repo.save_graph(ns, "g", row["template"], encrypt_secrets({"api_key": SECRET}, WRONG.encode()))
    start_workers(fstack, ns, 1)
    run_id = run(m.trigger("g"))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "FAILED"
    states = run(m.list_states(run_id))
    assert [s["status"] for s in states] == ["ERRORED"], states  # not retried: no delivery can do better
    assert MESSAGE in states[0]["error"]
