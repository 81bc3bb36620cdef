"""Several runtimes per namespace: each state reaches a runtime serving its node, on its node's queue
(`<prefix>.<ns>.<Node>`), with no retry spent and no beat; a node no live runtime serves waits, visibly
(`get_run`, `list_states`, `show`, `trigger --wait`), and runs as soon as a runtime for it starts.

No beat process runs in this module: everything here must work without one.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from exo_celery import GraphNodeModel, UnitesModel
from exo_celery.celery_app import make_app
from exo_celery.ledger.repo import Repo
from exo_celery.ledger.runtimes import Runtimes
from exo_celery.node import node_schema

from . import nodes
from .support import ROOT, Proc, Stack, run, uid

ITEMS = ["a", "b", "c"]


def fan_graph(m: Any, name: str) -> None:
    """Split -> Upper (x3) -> Collect (unites Split)."""
    run(
        m.upsert_graph(
            name,
            [
                GraphNodeModel(
                    node_name="Split", identifier="split", inputs={"items": json.dumps(ITEMS)}, next_nodes=["up"]
                ),
                GraphNodeModel(
                    node_name="Upper", identifier="up", inputs={"item": "${{ split.outputs.item }}"}, next_nodes=["all"]
                ),
                GraphNodeModel(
                    node_name="Collect",
                    identifier="all",
                    inputs={"values": "${{ up.outputs.result }}"},
                    unites=UnitesModel(identifier="split"),
                ),
            ],
            secrets={},
        )
    )


def register_schema_only(stack: Stack, ns: str, *classes: type) -> None:
    """Node schemas in the registry (so graphs validate) without any runtime serving them."""
    Repo(stack.settings().ledger_url).register_nodes(ns, {c.__name__: node_schema(c) for c in classes}, "schema-only")


def ran_in(proc: Proc, state_ids: list[str]) -> set[str]:
    """The states whose execution this worker's log shows."""
    text = proc.text()
    return {s for s in state_ids if re.search(rf"state={s} .*status=RUNNING", text)}


def wait_until(check: Any, timeout: float, what: str) -> Any:
    """Poll the ledger (through `check`) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not seen after {timeout} s")


def stop(stack: Stack, *procs: Proc) -> None:
    """The test is over for these workers: SIGKILL (a warm shutdown only costs time here)."""
    for proc in procs:
        proc.kill()
        proc.stop()
        if proc in stack.procs:
            stack.procs.remove(proc)


def stop_cleanly(stack: Stack, *procs: Proc) -> None:
    """SIGTERM to each worker's main process only (Celery's warm shutdown), then wait for it to exit."""
    for proc in procs:
        proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.popen.wait(timeout=60)
    stop(stack, *procs)


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exo_celery.cli", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def celery_worker(stack: Stack, ns: str, queues: list[str]) -> Proc:
    """`celery -A worker.app worker -Q ...`: every test node loaded, only the given queues consumed."""
    log = stack.home / f"celery-worker-{uuid.uuid4().hex[:6]}.log"
    env = {**stack.env, "EXO_NAMESPACE": ns, "EXO_NODES": "tests.nodes:NODES", "EXO_WORKER_NAME": "picked"}
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", ",".join(queues), "-c", "2"]
    argv += ["-n", f"picked-{uuid.uuid4().hex[:6]}@%h", "--loglevel=INFO"]
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen, log)
    stack.procs.append(proc)
    proc.wait_for(" ready.")
    return proc


def test_two_runtimes_in_one_namespace_each_run_only_their_nodes(stack: Stack) -> None:
    """Runtime A serves Split and Collect, runtime B (a `celery -A worker.app worker -Q` that loads every
    test node but consumes Upper's queue only) serves Upper: every state runs on its node's runtime."""
    ns = uid("rt")
    prefix = stack.settings().queue_prefix
    a = stack.start_worker(ns, nodes="tests.nodes:Split,tests.nodes:Collect")
    b = celery_worker(stack, ns, [f"{prefix}.{ns}.Upper", f"{prefix}.{ns}.Missing"])
    try:
        m = stack.manager(ns)
        name = uid("two")
        fan_graph(m, name)
        run_id = run(m.trigger(name))["run_id"]
        finished = run(m.wait(run_id, timeout=60))
        assert finished["status"] == "SUCCESS" and finished["waiting"] == []
        states = run(m.list_states(run_id))
        by_node: dict[str, list[str]] = {}
        for s in states:
            by_node.setdefault(s["node_name"], []).append(s["id"])
        assert {k: len(v) for k, v in by_node.items()} == {"Split": 3, "Upper": 3, "Collect": 1}
        executed = [s["id"] for s in states if s["attempts"]]  # fan-out outputs beyond the first never ran
        assert ran_in(a, executed) == {i for i in executed if i not in by_node["Upper"]}
        assert ran_in(b, executed) == set(by_node["Upper"])
        assert all(s["retry_count"] == 0 and s["error"] is None for s in states), states
        assert all(s["attempts"] <= 1 and s["waiting_reason"] is None for s in states), states
        assert next(s for s in states if s["identifier"] == "all")["outputs"]["values"] == '["A!", "B!", "C!"]'
        # B loaded every node but consumes the queues it was given, and refused the one it cannot serve.
        assert f"not consuming {prefix}.{ns}.Missing: node Missing is not served by this worker" in b.text()
        live = {r["name"]: r for r in Runtimes(stack.settings().ledger_url, 30).list_runtimes(ns)}
        assert live["picked"]["nodes"] == ["Upper"] and live["picked"]["live"]
        assert sorted(next(r for n, r in live.items() if n != "picked")["nodes"]) == ["Collect", "Split"]
    except BaseException:
        stop(stack, a, b)
        raise
    stop_cleanly(stack, a, b)
    after = Runtimes(stack.settings().ledger_url, 30).list_runtimes(ns)
    assert len(after) == 2 and not any(r["live"] for r in after)  # a clean stop is not live at once
    assert all(r["stopped_at"] is not None for r in after)


def test_a_node_nobody_serves_waits_visibly_then_runs_when_its_runtime_starts(stack: Stack) -> None:
    ns = uid("wait")
    a = stack.start_worker(ns, nodes="tests.nodes:Split,tests.nodes:Collect")
    b: Proc | None = None
    try:
        register_schema_only(stack, ns, nodes.Upper)
        m = stack.manager(ns)
        name = uid("fan")
        fan_graph(m, name)
        err = stack.home / f"trigger-{uuid.uuid4().hex[:6]}.err"
        with err.open("w") as stderr:
            waiter = subprocess.Popen(
                [sys.executable, "-m", "exo_celery.cli", "trigger", name, "-n", ns, "--wait", "--timeout", "90"],
                cwd=ROOT,
                env=stack.env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        try:
            line = "waiting for a runtime: no live runtime serves node Upper (3 states)"
            wait_until(lambda: line in err.read_text(), 60, "the waiting line of trigger --wait")
            (run_id,) = [r["run_id"] for r in run(m.list_runs(name))]
            seen = run(m.get_run(run_id))
            assert seen["status"] == "RUNNING"
            assert seen["waiting"] == [
                {"node_name": "Upper", "namespace": ns, "reason": "no live runtime serves node Upper", "states": 3}
            ]
            states = run(m.list_states(run_id))
            reasons = {s["identifier"]: s["waiting_reason"] for s in states if s["status"] == "QUEUED"}
            assert reasons == {"up": "no live runtime serves node Upper"} and len(states) == 6, states
            shown = cli(stack, "show", run_id, "-n", ns)
            assert shown.returncode == 0, shown.stderr
            assert line in shown.stdout and shown.stdout.count("waiting: no live runtime serves node Upper") == 3

            b = stack.start_worker(ns, nodes="tests.nodes:Upper")  # its messages are already in its queue
            out, _ = waiter.communicate(timeout=60)
        finally:
            if waiter.poll() is None:
                waiter.kill()
        assert waiter.returncode == 0, err.read_text()
        assert "SUCCESS" in out and "every waiting node has a live runtime now" in err.read_text()
        finished = run(m.get_run(run_id))
        assert finished["status"] == "SUCCESS" and finished["waiting"] == []
        states = run(m.list_states(run_id))
        assert all(s["retry_count"] == 0 and s["attempts"] <= 1 and s["waiting_reason"] is None for s in states)
        ups = [s["id"] for s in states if s["node_name"] == "Upper"]
        assert ran_in(b, ups) == set(ups) and not ran_in(a, ups)
    finally:
        stop(stack, a, *([b] if b else []))


def test_a_killed_runtime_goes_stale_and_its_node_waits_again(stack: Stack) -> None:
    """Lease 1.5 s: the runtime beats every 0.5 s; SIGKILLed, it stops being live within a few beats."""
    ns = uid("stale")
    w = stack.start_worker(ns, nodes="tests.nodes:Echo", env={"EXO_LEASE_SECONDS": "1.5"})
    runtimes = Runtimes(stack.settings().ledger_url, 30)
    try:
        (row,) = runtimes.list_runtimes(ns)
        assert row["live"] and row["nodes"] == ["Echo"] and row["stale_after"] == 1.5 and row["pid"] == w.popen.pid
        m = stack.manager(ns)
        name = uid("echo")
        run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={}))
        w.kill()
        w.popen.wait(timeout=10)
        wait_until(lambda: not runtimes.list_runtimes(ns)[0]["live"], 10, "the killed runtime going stale")
        run_id = run(m.trigger(name))["run_id"]
        waiting = run(m.get_run(run_id))["waiting"]
        assert [(x["node_name"], x["states"]) for x in waiting] == [("Echo", 1)]
        w2 = stack.start_worker(ns, nodes="tests.nodes:Echo")
        assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
        stop(stack, w2)
    finally:
        stop(stack, w)


def test_a_misrouted_message_is_handed_back_without_spending_a_retry(pg_stack: Stack) -> None:
    """A message under Echo's task (on Echo's queue) naming an Upper state: Echo's runtime gives the claim
    back, attempts and retries untouched, and sends the state to Upper's queue; Upper's runtime runs it."""
    stack = pg_stack
    ns = uid("mis")
    echo = stack.start_worker(ns, nodes="tests.nodes:Echo")
    upper: Proc | None = None
    try:
        register_schema_only(stack, ns, nodes.Upper)
        m = stack.manager(ns)
        name = uid("up")
        run(m.upsert_graph(name, [GraphNodeModel(node_name="Upper", identifier="u", inputs={"item": "x"})], secrets={}))
        run_id = run(m.trigger(name))["run_id"]
        (state,) = run(m.list_states(run_id))
        settings = stack.settings()
        task = f"{settings.queue_prefix}.{ns}.Echo"
        make_app(settings).send_task(task, args=[state["id"], run_id], queue=task)
        echo.wait_for(f"state {state['id']}: node Upper is not served by this worker; sent to its queue", 30)
        (state,) = run(m.list_states(run_id))
        assert (state["status"], state["attempts"], state["retry_count"], state["error"]) == ("QUEUED", 0, 0, None)
        assert state["waiting_reason"] == "no live runtime serves node Upper"
        upper = stack.start_worker(ns, nodes="tests.nodes:Upper")
        assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
        (state,) = run(m.list_states(run_id))
        assert (state["attempts"], state["retry_count"], state["outputs"]) == (1, 0, {"result": "X!"})
    finally:
        stop(stack, echo, *([upper] if upper else []))


def test_routing_on_rabbitmq_messages_wait_in_a_declared_queue(pg_rabbitmq_stack: Stack) -> None:
    """Published before any consumer of Upper's queue exists: the queue is declared on publish and keeps them."""
    from kombu import Connection

    stack = pg_rabbitmq_stack
    ns = uid("rmq")
    prefix = stack.settings().queue_prefix
    a = stack.start_worker(ns, nodes="tests.nodes:Split,tests.nodes:Collect")
    b: Proc | None = None
    try:
        register_schema_only(stack, ns, nodes.Upper)
        m = stack.manager(ns)
        name = uid("fan")
        fan_graph(m, name)
        run_id = run(m.trigger(name))["run_id"]
        wait_until(lambda: run(m.get_run(run_id))["waiting"], 30, "Upper waiting for a runtime")

        def in_queue() -> tuple[int, int] | None:
            with Connection(stack.broker_url) as conn:
                try:  # a passive declare of a missing queue raises (the publish may still be on its way)
                    _, messages, consumers = conn.channel().queue_declare(f"{prefix}.{ns}.Upper", passive=True)
                except Exception:
                    return None
            return (messages, consumers) if messages == 3 else None

        assert wait_until(in_queue, 30, "Upper's three messages in its queue") == (3, 0)
        b = stack.start_worker(ns, nodes="tests.nodes:Upper")
        assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
        states = run(m.list_states(run_id))
        assert all(s["retry_count"] == 0 and s["attempts"] <= 1 for s in states)
        ups = [s["id"] for s in states if s["node_name"] == "Upper"]
        assert ran_in(b, ups) == set(ups) and not ran_in(a, ups)
    finally:
        stop(stack, a, *([b] if b else []))
        with Connection(stack.broker_url) as conn:
            for node in ("Split", "Upper", "Collect"):
                try:
                    conn.channel().queue_delete(f"{prefix}.{ns}.{node}")
                except Exception:
                    pass


def test_queue_names(tmp_path: Path) -> None:
    """Names users type in `-Q` and see in Flower: one queue per node under the namespace's prefix."""
    from exo_celery import Runtime
    from exo_celery.celery_app import node_of_queue, queue_name
    from exo_celery.settings import Settings

    settings = Settings(home=tmp_path, queue_prefix="exo")
    assert queue_name(settings, "proj", "Upper") == "exo.proj.Upper"
    assert node_of_queue(settings, "proj", "exo.proj.Upper") == "Upper"
    assert node_of_queue(settings, "proj", "exo.proj") is None
    assert node_of_queue(settings, "other", "exo.proj.X") is None
    runtime = Runtime("proj", "r1", [nodes.Echo, nodes.Upper], settings=settings)
    assert runtime.queues == ["exo.proj.Echo", "exo.proj.Upper"]
    argv = runtime.worker_argv()
    assert argv[argv.index("-Q") + 1] == "exo.proj.Echo,exo.proj.Upper"
    assert sorted(runtime.app.amqp.queues) == ["exo.proj.Echo", "exo.proj.Upper"]  # without -Q: just these
