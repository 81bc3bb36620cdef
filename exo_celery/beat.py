"""The beat process: releases due states, recovers lost ones, fires cron triggers, purges old runs.

Run it as `exo-celery beat`, or as `celery -A exo_celery.beat_app beat` (the app's scheduler
is `ExoScheduler`, which does the same work inside Celery's beat loop). Two beat
processes are safe: every step is a compare-and-set or a unique insert.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.beat import Scheduler
from kombu.exceptions import ChannelError, KombuError

from .celery_app import is_rabbitmq, make_app, publish, queue_name
from .client import StateManager
from .cron import fire_times
from .engine import CompiledGraph
from .errors import ExoError
from .ledger import clock
from .ledger.heartbeats import record_beat
from .ledger.meta import check_secrets_key
from .ledger.repo import Repo
from .ledger.sweeps import dispatched_at
from .ledger.transitions import Dispatch, Transitions
from .settings import Settings, load_settings

log = logging.getLogger("exo_celery.beat")

PURGE_EVERY = 60.0
PURGE_BUDGET = 2.0  # seconds of purging per round at most; a round that runs out carries on next tick
# One purge transaction: at most this many runs and (past its first run) this many state rows, so that
# one transaction stays far inside the budget whatever the runs' width (500,000 rows took 1.3 s).
PURGE_RUNS, PURGE_STATES = 500, 20_000
# When nothing bounds a shortfall (an empty queue, or a broker whose oldest message cannot be read), it
# must last a lease plus this much per missing message: a worker publishing a 10,000-state fan-out sent
# its first pipeline 5 s after the commit (so 10,000 wait 17 s at a 2 s lease, one lost message a lease).
PUBLISH_ALLOWANCE = 0.0015


@dataclass(frozen=True)
class QueueLook:
    """What one sweep saw of a queue: its never-claimed states without a message, its ready messages,
    and how many the sweep re-sent."""

    lost: int
    queued: int
    resent: int = 0
    since: float = 0.0  # when (beat's monotonic clock) the current shortfall was first seen


def likely_lost(
    waiting: int,
    queued: int,
    in_flight: int,
    before: QueueLook | None,
    restarted: bool = False,
    seen_for: float = math.inf,
    lease: float = 0.0,
) -> int:
    """The sweep's re-send rule for never-claimed states of one queue (issue 13, item 11).

    `waiting` states of the queue are QUEUED, due and never claimed: each one's message is in the
    queue (`queued` ready messages), delivered to a worker and not yet claimed (`in_flight`), or
    lost. Queues are FIFO, so the missing messages are those of the states dispatched first; the
    caller re-sends that many of the oldest (and only those dispatched over a lease ago).

    A shortfall must be seen on two sweeps in a row, with no growth of the queue in between beyond
    what the sweep itself re-sent, and for at least a lease (`seen_for`): a worker may still be
    publishing a wide fan-out it committed (its states are in the ledger, their messages not yet in
    the queue; 10,000 took 30 s on a loaded machine, in pipelines of 1,000, so the queue can stay
    flat over a sweep). On Redis the caller also re-sends only states dispatched before the oldest
    message still queued: a FIFO queue has delivered everything published before it. With nothing to
    bound it (an empty queue, or another broker) the caller adds `PUBLISH_ALLOWANCE` per missing
    message. Stale copies of finished states count as messages, so the rule errs towards re-sending
    too little, never towards a storm; what it misses is re-sent once the backlog drains. A state
    whose lease expired after a claim is certainly lost and is re-sent without asking the broker
    (`Transitions.recover`).

    `restarted`: the broker restarted (or was unreachable) since the previous sweep, so what it held
    may be gone; the shortfall seen now is re-sent at once rather than a sweep later. Once per outage,
    so at most one copy more per state, never a storm.
    """
    lost = max(0, waiting - queued - in_flight)
    if restarted:
        return lost
    if before is None or queued > before.queued + before.resent or seen_for < lease:
        return 0
    return min(lost, before.lost)


@dataclass(frozen=True)
class BrokerLoad:
    """What one look at the broker found: (ready, delivered and unacknowledged) messages per queue, and
    the server's identity (Redis `run_id`, which changes when the server restarts; None elsewhere)."""

    queues: dict[str, tuple[int, int]]
    server: str | None = None
    oldest: dict[str, str] = field(default_factory=dict)  # queue -> state id of its oldest message (Redis)


def broker_load(app: Celery, queues: list[str], recent: float) -> BrokerLoad | None:
    """(ready messages, delivered but unacknowledged messages) per queue, or None if the broker is unreachable.

    Redis: LLEN of the queue (all priority lists) and the entries of kombu's `unacked` hash routed
    to it and delivered less than `recent` seconds ago (older ones may belong to a dead worker).
    RabbitMQ: the message count of a passive queue_declare, and as unacknowledged its consumers
    times one worker's prefetch (an estimate). Other transports (the embedded default): the messages
    in the queue's folder, and one worker's prefetch while the queue holds a backlog.
    """
    prefetch = int(app.conf.worker_prefetch_multiplier or 1) * int(app.conf.worker_concurrency or os.cpu_count() or 1)
    try:
        with app.connection_for_write() as conn:
            # One quick retry: a broker that is down is seen as down at once, and the tick goes on.
            conn.ensure_connection(max_retries=1, interval_start=0.1, interval_step=0, interval_max=0.1)
            if conn.transport.driver_type == "redis":
                return _redis_load(conn.default_channel, queues, recent)
            if is_rabbitmq(app.conf.broker_url or "") or conn.transport.driver_type == "amqp":
                return _amqp_load(conn, queues, prefetch)
            channel = conn.default_channel
            found: dict[str, tuple[int, int]] = {}
            for q in queues:
                ready = int(channel._size(q)) if channel._has_queue(q) else 0
                found[q] = (ready, prefetch if ready else 0)
            return BrokerLoad(found)
    except (KombuError, OSError, ConnectionError) as exc:
        log.debug("broker unreachable for the sweep (%s): never-claimed states wait", exc)
        return None
    except Exception as exc:  # a transport-specific error (redis-py, amqp): same as unreachable
        if "redis" in type(exc).__module__ or "amqp" in type(exc).__module__:
            log.debug("broker unreachable for the sweep (%s): never-claimed states wait", exc)
            return None
        raise


def _redis_load(channel: Any, queues: list[str], recent: float) -> BrokerLoad:
    # Only deliveries younger than `recent` count: a dead worker's unacknowledged messages
    # stay in the hash until the visibility timeout, and must not hide lost states.
    routed: Counter[str] = Counter()
    client = channel.client
    tags = client.zrangebyscore(channel.unacked_index_key, time.time() - recent, "+inf")
    for raw in client.hmget(channel.unacked_key, tags) if tags else []:
        try:
            routed[json.loads(raw)[2]] += 1
        except (ValueError, IndexError, TypeError):
            continue
    found: dict[str, tuple[int, int]] = {}
    oldest: dict[str, str] = {}
    for q in queues:
        found[q] = (int(channel._size(q)), routed[q])
        if (state_id := _state_of(client.lindex(q, -1))) is not None:  # kombu LPUSHes, BRPOPs
            oldest[q] = state_id
    server = str(client.info("server").get("run_id") or "") or None
    return BrokerLoad(found, server, oldest)


def _amqp_load(conn: Any, queues: list[str], prefetch: int) -> BrokerLoad:
    channel = conn.default_channel
    found: dict[str, tuple[int, int]] = {}
    for q in queues:
        try:
            _, ready, consumers = channel.queue_declare(queue=q, passive=True)
        except ChannelError:  # no such queue: nothing in it (and the channel is closed)
            channel = conn.channel()
            ready, consumers = 0, 0
        found[q] = (int(ready), int(consumers) * prefetch)
    return BrokerLoad(found)


def _state_of(raw: bytes | str | None) -> str | None:
    """The state id a kombu Redis message is for (its first task argument), or None."""
    if raw is None:
        return None
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if isinstance(args[0], str) else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


class Beat:
    """One beat process's work; `tick()` does one round and says how long to sleep."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or load_settings()
        self.app = app or make_app(self.settings, main="exo_celery.beat")
        self.repo = Repo(self.settings.ledger_url)
        self.transitions = Transitions(
            self.settings.ledger_url, self.settings.lease_seconds, self.settings.max_countdown, worker=True
        )
        self.cron_checked = clock.now(self.settings.ledger_url)
        self._graphs: dict[tuple[str, str, int], CompiledGraph] = {}
        self._last_sweep = 0.0
        self._last_purge = 0.0
        self._managers: dict[str, StateManager] = {}
        self.name = default_beat_name()  # the heartbeat row this process refreshes
        self.started_at = clock.now(self.settings.ledger_url)
        self._looks: dict[str, QueueLook] = {}  # the previous sweep's view of each queue
        self._broker: str | None = None  # the broker server the previous look saw (Redis run_id)
        self._outage = False  # the previous look found the broker unreachable

    @property
    def horizon(self) -> float:
        """How far ahead delayed states are released (they are then sent with a countdown)."""
        return min(self.settings.max_countdown, 2 * self.settings.sweep_interval)

    def tick(self) -> float:
        """Run whatever is due now (on the ledger's clock); returns seconds until the next tick."""
        now = clock.now(self.settings.ledger_url)
        self.fire_crons(now)
        if now - self._last_sweep >= self.settings.sweep_interval:
            self._last_sweep = now
            due = self.transitions.release_due(self.horizon)
            lost = self.transitions.recover() + self.resend_unclaimed()
            for d, why in [*((d, "QUEUED") for d in due), *((d, "QUEUED (re-sent)") for d in lost)]:
                log.info(
                    "run=%s state=%s graph=%s identifier=%s status=%s",
                    d.run_id,
                    d.state_id,
                    d.graph_name,
                    d.identifier,
                    why,
                )
            publish(self.app, self.settings, [*due, *lost])
            if due or lost:
                log.info("released %d due state(s), re-sent %d lost or orphaned state(s)", len(due), len(lost))
        if now - self._last_purge >= PURGE_EVERY:
            self._last_purge = now
            purged, started, longest = 0, time.monotonic(), 0.0
            while time.monotonic() - started < PURGE_BUDGET:
                begun = time.monotonic()
                done = self.repo.purge_finished_runs(now - self.settings.retention_seconds, PURGE_RUNS, PURGE_STATES)
                longest = max(longest, time.monotonic() - begun)
                purged += done
                if not done:
                    break
            else:
                self._last_purge = 0.0  # not finished: carry on next tick
            if purged:
                log.info(
                    "purged %d finished run(s) past retention in %.2f s (longest transaction %.2f s)",
                    purged,
                    time.monotonic() - started,
                    longest,
                )
        self.heartbeat()
        return min(1.0, self.settings.sweep_interval)

    def resend_unclaimed(self) -> list[Dispatch]:
        """Never-claimed states whose message the broker no longer holds, by `likely_lost`."""
        by_queue: dict[str, tuple[list[tuple[str, str]], int]] = {}
        for ns, node, count in self.transitions.waiting_unclaimed():
            queue = queue_name(self.settings, ns, node)
            nodes, waiting = by_queue.get(queue, ([], 0))
            by_queue[queue] = ([*nodes, (ns, node)], waiting + count)
        if not by_queue:
            self._looks = {}
            return []
        load = broker_load(self.app, sorted(by_queue), self.settings.lease_seconds)
        if load is None:
            self._outage = True
            return []
        restarted = self._outage or (None not in (self._broker, load.server) and load.server != self._broker)
        if restarted:
            log.info("the broker restarted or was unreachable: re-sending what it no longer holds")
        self._broker, self._outage = load.server, False
        now, lease = time.monotonic(), self.settings.lease_seconds
        resent: list[Dispatch] = []
        looks: dict[str, QueueLook] = {}
        for q, (nodes, waiting) in by_queue.items():
            queued, in_flight = load.queues.get(q, (0, 0))
            shortfall, before = max(0, waiting - queued - in_flight), self._looks.get(q)
            growing = before is None or queued > before.queued + before.resent
            since = before.since if before is not None and before.lost and shortfall and not growing else now
            wait = lease if q in load.oldest else lease + shortfall * PUBLISH_ALLOWANCE
            count = likely_lost(waiting, queued, in_flight, before, restarted, now - since, wait)
            bound = None
            if count and not restarted and q in load.oldest:
                # Later states' messages are behind the oldest queued one; it has no dispatch time if its
                # state is gone (purged): then nothing is bounded.
                bound = dispatched_at(self.transitions.engine, [load.oldest[q]]).get(load.oldest[q])
            sent = self.transitions.resend_oldest(nodes, count, bound) if count else []
            looks[q] = QueueLook(shortfall, queued, len(sent), since)
            resent += sent
        self._looks = looks
        return resent

    def heartbeat(self) -> None:
        """Record that a tick finished (on the ledger's clock); `exo-celery beat --check` reads it."""
        record_beat(
            self.settings.ledger_url,
            self.name,
            socket.gethostname(),
            os.getpid(),
            self.started_at,
            self.settings.sweep_interval,
        )

    def fire_crons(self, now: float) -> int:
        """Trigger every graph whose cron time passed since the last check (once, across beats)."""
        # Reloaded every tick (one query) so a graph upserted just before a fire time fires at it.
        graphs = []
        for row in self.repo.latest_graphs():
            if row["template"].get("triggers"):
                key = (row["namespace"], row["name"], row["version"])
                if key not in self._graphs:
                    self._graphs[key] = CompiledGraph.from_row(row)
                graphs.append(self._graphs[key])
        after = datetime.fromtimestamp(self.cron_checked, UTC)
        until = datetime.fromtimestamp(now, UTC)
        self.cron_checked = now
        fired = 0
        for graph in graphs:
            for trigger in graph.template.triggers:
                for at in fire_times(trigger.expression, after, until):
                    fired += self._fire(graph, trigger.expression, at)
        return fired

    def _fire(self, graph: CompiledGraph, expression: str, at: datetime) -> int:
        ns, name = graph.template.namespace, graph.template.name
        key = f"{ns}/{name}/{expression}/{int(at.timestamp())}"
        manager = self._managers.setdefault(ns, StateManager(ns, settings=self.settings, validation_timeout=0))
        try:
            result = manager.trigger_sync(name, cron_key=key)
        except ExoError as exc:
            log.error("cron trigger %r of graph %r could not start a run: %s", expression, name, exc)
            return 0
        if result["status"] == "CREATED":
            log.info("cron %r fired graph %r at %s: run %s", expression, name, at.isoformat(), result["run_id"])
            return 1
        return 0

    def check_secrets_key(self) -> None:
        """Refuse to start with a secrets key other than the ledger's (ConfigError): cron runs would fail."""
        check_secrets_key(self.settings.ledger_url, self.settings.fernet_key())

    def run_forever(self) -> None:
        """Tick until interrupted (after checking the secrets key)."""
        self.check_secrets_key()
        log.info(
            "exo_celery beat started (sweep every %.1f s, lease %.1f s)",
            self.settings.sweep_interval,
            self.settings.lease_seconds,
        )
        while True:
            try:
                pause = self.tick()
            except Exception:
                log.exception("beat tick failed; retrying")
                pause = 1.0
            time.sleep(pause)


def default_beat_name() -> str:
    """`beat@<hostname>`: a container's healthcheck runs on its beat's host, so it finds its row."""
    return f"beat@{socket.gethostname()}"


def heartbeat_limit(settings: Settings) -> float:
    """How old the last tick may be before `exo-celery beat --check` fails: a few sweep intervals."""
    return max(3 * settings.sweep_interval, 10.0)


class ExoScheduler(Scheduler):  # type: ignore[misc]  # celery ships no type stubs: Scheduler is Any
    """A Celery beat scheduler that also does exo_celery's beat work each tick."""

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        settings = getattr(app, "exo_settings", None) or load_settings()
        self.exo = Beat(settings, app)
        self.exo.check_secrets_key()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            pause = self.exo.tick()
        except Exception:
            log.exception("beat tick failed; retrying")
            pause = 1.0
        celery_pause: float = super().tick(*args, **kwargs)
        return min(pause, celery_pause)
