"""The Celery app factory and the publisher of state messages (ids only)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable
from contextlib import nullcontext

from celery import Celery
from kombu import Exchange, Queue

from .ledger import clock
from .outcomes import Dispatch
from .settings import Settings

# RabbitMQ closes a channel whose delivery stays unacked longer than its consumer_timeout (30 min by
# default). A countdown is held unacked by the worker until due (and, with late acks, until the state
# finishes), so EXO_MAX_COUNTDOWN must stay well below it; longer delays wait in the ledger instead.
RABBITMQ_CONSUMER_TIMEOUT = 1800.0

# kombu picks TLS for `rediss://` only when its own transport is named by the URL's scheme, with these
# options when none are given (and a warning): exo_celery's Redis transport keeps them for rediss:// URLs.
REDISS_TLS = {"ssl_cert_reqs": ssl.CERT_NONE}


def is_rabbitmq(url: str) -> bool:
    """True for AMQP broker URLs (RabbitMQ)."""
    return url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


log = logging.getLogger("exo_celery.publish")


def namespace_queue_prefix(settings: Settings, namespace: str) -> str:
    """What every queue of a namespace starts with: `<prefix>.<namespace>.` (for `-Q`, Flower, broker tools)."""
    return f"{settings.queue_prefix}.{namespace}."


def queue_name(settings: Settings, namespace: str, node_name: str) -> str:
    """The queue a node's states go to: `<prefix>.<namespace>.<NodeName>`.

    One queue per node, under the namespace's prefix: a worker consumes the queues of the nodes it
    serves, so a state only ever reaches a runtime that can run it, and its message waits in its
    queue (declared when it is published) until such a runtime starts.
    """
    return f"{namespace_queue_prefix(settings, namespace)}{node_name}"


def node_of_queue(settings: Settings, namespace: str, queue: str) -> str | None:
    """The node whose queue `queue` is, in `namespace`; None for any other queue."""
    prefix = namespace_queue_prefix(settings, namespace)
    rest = queue[len(prefix) :] if queue.startswith(prefix) else ""
    return rest if rest and "." not in rest else None


def declared_queue(name: str) -> Queue:
    """A queue as Celery creates a missing one on publish (direct exchange of its own name), so that a
    worker's declaration and a publisher's agree on RabbitMQ."""
    return Queue(name, Exchange(name), routing_key=name)


def task_name(settings: Settings, namespace: str, node_name: str) -> str:
    """The Celery task name of a node: `<prefix>.<namespace>.<NodeName>`."""
    return f"{settings.queue_prefix}.{namespace}.{node_name}"


def make_app(settings: Settings, main: str = "exo_celery") -> Celery:
    """A Celery app configured for exo_celery: late acks, task events, no result backend."""
    app = Celery(main, broker=settings.broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_send_task_events=True,
        task_send_sent_event=False,  # one Redis round trip less per published state; workers still send events
        worker_prefetch_multiplier=4,
        task_default_queue=f"{settings.queue_prefix}.default",
        worker_hijack_root_logger=False,
        enable_utc=True,
        worker_timer_precision=0.1,  # countdowns fire within ~0.1 s, also on pollers like the embedded broker
        worker_consumer="exo_celery.consumer:Consumer",  # reconnects to a broker that is back within ~1 s
    )
    if settings.is_embedded_broker:
        app.conf.broker_transport = "exo_celery.embedded_transport:Transport"
    elif settings.broker.startswith(("redis://", "rediss://")):
        app.conf.broker_transport = "exo_celery.poison:RedisTransport"  # a malformed message never stops a worker
        if settings.broker.startswith("rediss://"):
            app.conf.broker_use_ssl = REDISS_TLS
            log.warning("rediss:// broker: TLS without certificate verification (kombu's default for rediss://)")
    if is_rabbitmq(settings.broker) and settings.max_countdown > RABBITMQ_CONSUMER_TIMEOUT / 2:
        log.warning(
            "EXO_MAX_COUNTDOWN=%g s is close to RabbitMQ's default consumer_timeout (%g s): workers hold countdowns "
            "unacked until due; lower EXO_MAX_COUNTDOWN or raise consumer_timeout in rabbitmq.conf",
            settings.max_countdown,
            RABBITMQ_CONSUMER_TIMEOUT,
        )
    app.exo_settings = settings
    return app


def describe(d: Dispatch) -> str:
    """What Flower and the worker log show as a task's arguments: ids and names, no values."""
    return f"(graph={d.graph_name!r}, identifier={d.identifier!r}, run_id={d.run_id!r}, state_id={d.state_id!r})"


PUBLISH_ATTEMPTS = 5  # about 4 s of retries in all (0.25 + 0.5 + 1 + 2)


def publish(app: Celery, settings: Settings, dispatches: Iterable[Dispatch]) -> int:
    """Send one message per state (after the ledger commit); delays become Celery countdowns.

    Several messages go out in batches (one Redis pipeline per 1,000 on Redis; other transports send
    each at once). A batch that fails may have been delivered in part, so it is sent again whole, a
    few times over about 4 s (a duplicate is harmless: the claim is a compare-and-set). Only if the
    broker stays unusable are the states left QUEUED for beat's sweep (issue 13, item 16: without a
    beat, one failed pipeline left a run RUNNING for ever). Publishing never fails a committed
    transition: it returns how many messages were sent (0 or all).
    """
    items = list(dispatches)
    if not items:
        return 0
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            _send(app, settings, items)
            return len(items)
        except Exception as exc:  # kombu's, redis-py's or amqp's errors alike: the ledger is already committed
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if attempt == PUBLISH_ATTEMPTS - 1:
                log.warning("broker unusable (%s): %d state(s) left for beat to re-send", cause, len(items))
                return 0
            log.warning("publishing %d state(s) failed (%s); sending them again", len(items), cause)
            time.sleep(0.25 * 2**attempt)
    return 0


def _send(app: Celery, settings: Settings, items: list[Dispatch]) -> None:
    # Due times are on the ledger's clock; the countdown is relative, so the receiving worker's own clock
    # only decides when the message is delivered, and the claim (on the ledger's clock) whether it may run.
    now = clock.now(settings.ledger_url)
    with app.producer_or_acquire() as producer, producer.batch() if len(items) > 1 else nullcontext():
        for d in items:
            countdown = d.due_at - now
            app.send_task(
                task_name(settings, d.namespace, d.node_name),
                args=[d.state_id, d.run_id],
                queue=queue_name(settings, d.namespace, d.node_name),
                countdown=countdown if countdown > 0.001 else None,
                argsrepr=describe(d),
                kwargsrepr="{}",
                producer=producer,
                add_to_parent=False,
            )
