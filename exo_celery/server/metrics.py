"""`/metrics` in Prometheus text format, derived from the ledger (and the broker) at scrape time.

The server is its own process, so it cannot count what workers and beat do in memory; everything a
worker or beat does lands in the ledger, so a collector aggregates the ledger in SQL at each scrape
(a few GROUP BY statements) and asks the broker for each namespace queue's depth. See docs/metrics.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..celery_app import queue_name
from ..ledger.queries import LATENCY_BUCKETS, Queries
from ..settings import Settings
from ..status import TERMINAL_RUNS

log = logging.getLogger("exo_celery.server.metrics")
_TERMINAL = {s.value for s in TERMINAL_RUNS}


class LedgerCollector(Collector):
    """Run, state, latency, retry, prune, re-send, release and queue-depth series, read at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queries = Queries(settings.ledger_url)

    def collect(self) -> Iterator[Metric]:
        yield from self._runs()
        yield from self._states()
        yield from self._latencies()
        yield from self._queues()

    def _runs(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "exo_runs_started", "Runs that started (in the ledger)", labels=["namespace", "graph"]
        )
        finished = CounterMetricFamily(
            "exo_runs_finished",
            "Runs that ended, by final status (in the ledger)",
            labels=["namespace", "graph", "status"],
        )
        current = GaugeMetricFamily("exo_runs", "Runs in the ledger by status", labels=["namespace", "graph", "status"])
        totals: dict[tuple[str, str], int] = {}
        for r in self.queries.run_totals():
            key = (r["namespace"], r["graph_name"])
            totals[key] = totals.get(key, 0) + int(r["started"])
            current.add_metric([*key, r["status"]], int(r["n"]))
            if r["status"] in _TERMINAL:
                finished.add_metric([*key, r["status"]], int(r["n"]))
        for key, n in totals.items():
            started.add_metric(list(key), n)
        yield from (started, finished, current)

    def _states(self) -> Iterator[Metric]:
        labels = ["namespace", "node"]
        states = GaugeMetricFamily("exo_states", "States in the ledger by node and status", labels=[*labels, "status"])
        retries = CounterMetricFamily(
            "exo_state_retries", "States created as a retry (automatic or manual)", labels=labels
        )
        prunes = CounterMetricFamily("exo_state_prunes", "States that ended PRUNED", labels=labels)
        resends = CounterMetricFamily(
            "exo_state_resends", "Claims beyond a state's first (re-sent by beat's sweep or redelivered)", labels=labels
        )
        releases = CounterMetricFamily(
            "exo_state_releases", "States delayed past EXO_MAX_COUNTDOWN that beat released when due", labels=labels
        )
        sums: dict[str, dict[tuple[str, str], int]] = {"retries": {}, "prunes": {}, "resends": {}}
        for r in self.queries.state_totals():
            key = (r["namespace"], r["node_name"])
            states.add_metric([*key, r["status"]], int(r["n"]))
            for name, value in (("retries", r["retries"]), ("resends", r["resends"])):
                sums[name][key] = sums[name].get(key, 0) + int(value)
            if r["status"] == "PRUNED":
                sums["prunes"][key] = sums["prunes"].get(key, 0) + int(r["n"])
        for family, name in ((retries, "retries"), (prunes, "prunes"), (resends, "resends")):
            for key, n in sums[name].items():
                family.add_metric(list(key), n)
        for r in self.queries.released_totals(self.settings.max_countdown):
            releases.add_metric([r["namespace"], r["node_name"]], int(r["n"]))
        yield from (states, retries, prunes, resends, releases)

    def _latencies(self) -> Iterator[Metric]:
        found = self.queries.latency_histograms()
        for name, doc in (
            ("wait", "Seconds from due (queued) to started, per node"),
            ("execution", "Seconds from started to finished, per node (states that finished)"),
        ):
            family = HistogramMetricFamily(f"exo_state_{name}_seconds", doc, labels=["namespace", "node"])
            for r in found[name]:
                buckets: list[tuple[str, float]] = [(str(b), float(r[f"b{i}"])) for i, b in enumerate(LATENCY_BUCKETS)]
                buckets.append(("+Inf", float(r["count"])))
                family.add_metric([r["namespace"], r["node_name"]], buckets, float(r["sum"] or 0.0))
            yield family

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("exo_queue_depth", "Messages waiting in each node's queue", labels=["queue"])
        up = GaugeMetricFamily("exo_broker_up", "1 when the broker answered the queue-depth check")
        try:
            for queue, n in self._depths().items():
                depth.add_metric([queue], n)
            up.add_metric([], 1)
        except Exception as exc:  # the page must still answer when the broker is down
            log.warning("queue depth unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
        yield from (depth, up)

    def _depths(self) -> dict[str, int]:
        from kombu import Connection

        result: dict[str, int] = {}
        names = [queue_name(self.settings, ns, node) for ns, node in self.queries.queue_names()]
        if not names:
            return result
        options: dict[str, Any] = self.settings.broker_transport_options()
        with Connection(self.settings.broker, transport_options=options, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            for name in names:
                try:
                    _, count, _ = channel.queue_declare(queue=name, passive=True)
                    result[name] = int(count)
                except Exception:  # not declared yet: nothing waits in it
                    result[name] = 0
                    channel = conn.channel()
        return result


def make_registry(settings: Settings) -> CollectorRegistry:
    """A registry holding only the ledger collector (no process metrics of the server itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(settings))
    return registry
