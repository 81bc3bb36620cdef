"""Issue 13, item 5: one malformed message must not stop a worker (it used to exit on `LPUSH exo.<ns> 'not json'`).

Raw garbage, envelopes of the wrong shape, bodies Celery cannot decode and task messages whose
arguments are not (state id, run id) are pushed onto the queue a worker consumes. Each is logged
and dropped; the worker keeps serving (a run triggered after them succeeds) and the ledger is
untouched by them. The queue is found from what the worker declared (Redis bindings, the embedded
broker's exchange files), not from a hard-coded name.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from exo_celery import GraphNodeModel
from exo_celery.celery_app import make_app

from ..support import Proc, Stack, run, uid
from .harness import Ledger, PrivateRedis, register, start_workers, wait_until

ECHO = [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "after the poison"})]


def _envelope(queue: str, body: str, headers: dict[str, object] | None = None) -> dict[str, object]:
    """A kombu message envelope as the Redis and filesystem transports store it."""
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers or {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
        },
    }


def _poison(queue: str, task: str) -> list[bytes]:
    """Raw payloads a queue must survive: not JSON, not UTF-8, JSON of the wrong shape, bad bodies."""
    garbage = base64.b64encode(b"not json").decode()
    headers = {"task": task, "id": str(uuid.uuid4()), "lang": "py", "argsrepr": "()", "kwargsrepr": "{}"}
    shapes: list[object] = [
        [1, 2],
        "text",
        {"body": "x"},
        {"properties": {"delivery_tag": "t"}, "body": "x"},
        _envelope(queue, "!!! not base64 !!!"),
        _envelope(queue, garbage),  # decodes, but the body is not JSON: Celery's own decode-error path
        _envelope(queue, garbage, headers),  # ... under our task's name
    ]
    return [b"not json", b"\xff\xfe\x00{", *(json.dumps(s).encode() for s in shapes)]


def _bad_calls(stack: Stack, queue: str, task: str) -> int:
    """Task messages with wrong arguments (bad ids, wrong arity, keywords) and an unknown task name."""
    app = make_app(stack.settings())
    real = uuid.uuid4().hex
    calls: list[tuple[str, list[object], dict[str, object]]] = [
        (task, ["not-an-id", "nope"], {}),
        (task, [real], {}),
        (task, [real, real, real], {}),
        (task, [real, real], {"extra": 1}),
        (task, [None, 5], {}),
        (task, [f"{real}\x00", real], {}),
        (task.rsplit(".", 1)[0] + ".NoSuchNode", [real, real], {}),
    ]
    for name, args, kwargs in calls:
        app.send_task(name, args=args, kwargs=kwargs, queue=queue)
    return len(calls)


def _serves_after(stack: Stack, ns: str, worker: Proc, poisoned: int) -> None:
    m = stack.manager(ns)
    run_id = run(m.trigger("echo"))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS", worker.text()[-3000:]
    assert worker.popen.poll() is None, f"the worker exited:\n{worker.text()[-3000:]}"
    log = worker.text()
    assert "Unrecoverable error" not in log, log[-3000:]
    def discards() -> int | None:
        count = worker.text().count("discarded a message")
        return count if count >= poisoned else None

    wait_until(discards, 30, f"{poisoned} discard lines")
    log = worker.text()
    assert log.count("discarded a message") >= poisoned, log[-4000:]


def test_redis_worker_survives_malformed_messages(fstack: Stack, private_redis: PrivateRedis) -> None:
    ns = uid("poison")
    register(fstack, ns)
    run(fstack.manager(ns).upsert_graph("echo", ECHO, secrets={}))
    (worker,) = start_workers(fstack, ns, 1)
    client = private_redis.client()
    prefix = f"{fstack.settings().queue_prefix}.{ns}"

    def queues() -> list[str]:
        found = set()
        for key in client.scan_iter("_kombu.binding.*"):
            for member in client.smembers(key):
                queue = member.decode().split("\x06\x16")[-1]
                if queue == prefix or queue.startswith(prefix + "."):
                    found.add(queue)
        return sorted(found)

    queue = next(iter(q for q in wait_until(queues, 10, "the worker's queue bindings") if not q.endswith(".pidbox")))
    task = f"{prefix}.Echo"
    payloads = _poison(queue, task)
    for raw in payloads:
        client.lpush(queue, raw)
    sent = _bad_calls(fstack, queue, task)
    before = Ledger(fstack.database_url or "").table_counts()
    # 2 raw + 5 shapes are dropped by the transport; the 2 undecodable bodies are Celery's (logged, rejected).
    _serves_after(fstack, ns, worker, len(payloads) - 2 + sent - 1)
    after = Ledger(fstack.database_url or "").table_counts()
    assert after["exo_runs"] == before["exo_runs"] + 1 and after["exo_states"] == before["exo_states"] + 1
    assert client.llen(queue) == 0


def test_embedded_worker_survives_malformed_message_files(tmp_path: Path) -> None:
    stack = Stack("embedded-poison", tmp_path / "home")
    ns = uid("poison")
    try:
        register(stack, ns)
        run(stack.manager(ns).upsert_graph("echo", ECHO, secrets={}))
        worker = stack.start_worker(ns, "tests.faults.nodes:NODES", concurrency=1)
        broker = stack.settings().home_dir / "broker"
        prefix = f"{stack.settings().queue_prefix}.{ns}"

        def queues() -> list[str]:
            found = set()
            for exchange in (broker / "control").glob("*.exchange"):
                for binding in json.loads(exchange.read_text() or "[]"):
                    if binding[-1] == prefix or str(binding[-1]).startswith(prefix + "."):
                        found.add(binding[-1])
            return sorted(found)

        queue = wait_until(queues, 10, "the worker's queue bindings")[0]
        payloads = _poison(queue, f"{prefix}.Echo")
        for i, raw in enumerate(payloads):
            (broker / "queue" / f"{i:015d}_poison.{queue}.msg").write_bytes(raw)
        sent = _bad_calls(stack, queue, f"{prefix}.Echo")
        _serves_after(stack, ns, worker, len(payloads) - 2 + sent - 1)
    finally:
        stack.stop_all()


def test_rabbitmq_worker_survives_undecodable_bodies_and_bad_calls(pg_rabbitmq_stack: Stack) -> None:
    """On AMQP the envelope is the protocol's own; Celery rejects bodies it cannot decode, and the task drops
    calls whose arguments are wrong. The shared RabbitMQ worker must keep serving after them."""
    from kombu import Connection

    from exo_celery.celery_app import queue_name, task_name

    from ..conftest import SHARED_NAMESPACE
    from ..support import RABBITMQ_URL

    stack = pg_rabbitmq_stack
    settings = stack.settings()
    try:
        queue = queue_name(settings, SHARED_NAMESPACE, "Echo")  # type: ignore[call-arg]  # per-node queues
    except TypeError:
        queue = queue_name(settings, SHARED_NAMESPACE)
    task = task_name(settings, SHARED_NAMESPACE, "Echo")
    with Connection(RABBITMQ_URL) as conn:
        producer = conn.Producer()
        for body, headers in ((b"not json", {}), (b"\xff\xfe", {}), (b"not json", {"task": task, "id": "x"})):
            producer.publish(
                body,
                exchange="",
                routing_key=queue,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
            )
    sent = _bad_calls(stack, queue, task)
    m = stack.manager(SHARED_NAMESPACE)
    name = uid("echo")
    run(m.upsert_graph(name, [GraphNodeModel(node_name="Echo", identifier="e", inputs={"text": "x"})], secrets={}))
    run_id = run(m.trigger(name))["run_id"]
    assert run(m.wait(run_id, timeout=60))["status"] == "SUCCESS"
    (worker,) = stack.procs
    assert worker.popen.poll() is None, worker.text()[-3000:]
    assert worker.text().count("discarded a message for") >= sent - 1
