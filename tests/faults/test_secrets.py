"""Scenario 7: secrets never leave the encrypted column (the other scenarios scan after themselves too).

Every message and event that went through the broker is captured (Redis MONITOR), and after the runs
the broker's keys, every ledger table (all columns), the worker and beat logs, the CLI's output and the
client API's answers are searched for the secret value, in clear and inside base64 message bodies.
Each scan is checked against a control value (a run id) that must be found, so a blind scan fails.
"""

from __future__ import annotations

import json
import uuid

from exo_celery import GraphNodeModel

from ..support import Stack, run, uid
from .harness import (
    SECRET,
    Figures,
    Ledger,
    PrivateRedis,
    RedisTap,
    expand,
    ledger_dump,
    register,
    scan_secrets,
    start_workers,
    upsert,
)

QUICK_RETRY = {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 100}


def test_the_secret_value_appears_nowhere(fstack: Stack, private_redis: PrivateRedis, figures: Figures) -> None:
    tap = RedisTap(private_redis)
    ns = uid("secret")
    ledger = Ledger(fstack.database_url or "")
    upsert(
        fstack,
        ns,
        "uses",
        [
            GraphNodeModel(node_name="FanOut", identifier="fan", inputs={"n": "5"}, next_nodes=["leak"]),
            GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "ok"}, next_nodes=["work"]),
            GraphNodeModel(
                node_name="Work",
                identifier="work",
                inputs={"item": "${{ fan.outputs.item }}/${{ leak.outputs.text }}", "path": "/dev/null", "ms": "0"},
            ),
        ],
        retry_policy=QUICK_RETRY,
    )
    # The node puts the secret in its exception: the error text is redacted before it is stored or logged.
    upsert(
        fstack,
        ns,
        "raises",
        [GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "error"})],
        retry_policy=QUICK_RETRY,
    )
    start_workers(fstack, ns, 1)
    fstack.start_beat()
    m = fstack.manager(ns)
    ok, raises = (run(m.trigger(g))["run_id"] for g in ("uses", "raises"))
    assert ledger.wait_runs([ok, raises], timeout=60) == {ok: "SUCCESS", raises: "FAILED"}

    states = run(m.list_states(raises))
    assert [s["status"] for s in states] == ["RETRY_CREATED", "ERRORED"]
    assert all(s["error"] == "ValueError: upstream refused key ***" for s in states), states
    graph = run(m.get_graph("uses"))
    assert graph["secrets"] == {"api_key": True}  # Exosphere's form: {name: true}
    cipher = ledger.value("SELECT secrets_cipher FROM exo_graphs WHERE namespace = %s LIMIT 1", (ns,))
    assert cipher and SECRET not in cipher

    api = json.dumps([run(m.list_states(ok)), states, graph, run(m.get_run(ok)), run(m.list_runs())], default=str)
    scan = scan_secrets(
        fstack,
        run_ids=[ok, raises],
        namespace=ns,
        redis_client=private_redis.client(),
        tap_text=tap.text(),
        extra={"client API answers": api},
        full_cli=True,
    )
    figures.record(
        "7-secrets",
        runs=2,
        places_scanned=sorted(scan.scanned),
        bytes_scanned=sum(scan.scanned.values()),
        places_with_the_secret=scan.found,
    )
    assert not scan.found, f"the secret leaked into {scan.found}"


def test_a_secret_returned_as_output_is_not_stored_in_clear(fstack: Stack) -> None:
    ns = uid("outleak")
    upsert(
        fstack,
        ns,
        "g",
        [
            GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "output"}, next_nodes=["echo"]),
            GraphNodeModel(node_name="Echo", identifier="echo", inputs={"text": "${{ leak.outputs.text }}"}),
        ],
    )
    start_workers(fstack, ns, 1)
    m = fstack.manager(ns)
    run_id = run(m.trigger("g"))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    assert all(SECRET not in json.dumps(s) for s in run(m.list_states(run_id))), "list_states masks it"
    stored = Ledger(fstack.database_url or "").rows("SELECT t::text FROM exo_states t WHERE run_id = %s", (run_id,))
    assert not [r for r in stored if SECRET in r[0]], "the secret is stored in clear in the ledger"


def test_store_writes_escaped_forms_and_printed_secrets_reach_neither_ledger_nor_log(
    fstack: Stack, private_redis: PrivateRedis
) -> None:
    """Issue 13, items 2 to 4: a secret written to the store (and read by the next state), raised as
    `KeyError(secret)` with a newline and a quote in it, printed, logged and written to stderr by a node."""
    tail = uuid.uuid4().hex  # every spelling of the secret (plain, repr, JSON) contains it
    secret = f"line1\nline2-'{tail}"
    ns = uid("leak2")
    register(fstack, ns)
    m = fstack.manager(ns)
    graphs = {
        "store": [
            GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "store"}, next_nodes=["echo"]),
            GraphNodeModel(
                node_name="Echo", identifier="echo", inputs={"text": "tok=${{ store.tok }} / ${{ store.tok_repr }}"}
            ),
        ],
        "keyerror": [GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "keyerror"})],
        "print": [GraphNodeModel(node_name="Leak", identifier="leak", inputs={"mode": "print"})],
    }
    for name, nodes in graphs.items():
        run(m.upsert_graph(name, nodes, secrets={"api_key": secret}, retry_policy={"max_retries": 0}))
    tap = RedisTap(private_redis)
    (worker,) = start_workers(fstack, ns, 1)
    ids = {name: run(m.trigger(name))["run_id"] for name in graphs}
    ledger = Ledger(fstack.database_url or "")
    assert ledger.wait_runs(list(ids.values()), timeout=60) == {
        ids["store"]: "SUCCESS",
        ids["keyerror"]: "FAILED",
        ids["print"]: "SUCCESS",
    }
    # The store holds *** and the next state reads *** (the node must use self.secrets, not the store).
    assert dict(ledger.rows("SELECT key, value FROM exo_store WHERE run_id = %s", (ids["store"],))) == {
        "tok": "***",
        "tok_repr": '"***"',
    }
    echo = ledger.value(
        "SELECT inputs->>'text' FROM exo_states WHERE run_id = %s AND identifier = 'echo'", (ids["store"],)
    )
    assert echo == 'tok=*** / "***"'
    # str(KeyError(secret)) is repr(secret): the escaped form is redacted too.
    error = ledger.value("SELECT error FROM exo_states WHERE run_id = %s", (ids["keyerror"],))
    assert error == 'KeyError: "***"'
    log = worker.text()
    for marker in ("printed-marker ***", 'printed-marker-repr "***"', "logged-marker ***", "stderr-marker ***"):
        assert marker in log, f"{marker!r} not in the worker log:\n{log[-2000:]}"
    found = [
        place
        for place, text in (
            ("ledger tables", ledger_dump(ledger)),
            ("worker log", log),
            ("broker traffic", expand(tap.text())),
            ("client API answers", json.dumps([run(m.list_states(r)) for r in ids.values()])),
        )
        if tail in text
    ]
    assert not found, f"the secret leaked into {found}"
