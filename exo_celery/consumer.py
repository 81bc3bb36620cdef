"""The worker's consumer: Celery's own, reconnecting to a broker that is back within about a second.

Celery's consumer retries a lost broker connection through kombu's defaults: it sleeps 2 s, then
4, 6, ... up to 30 s between attempts. After an outage of 10 s a worker therefore starts consuming
again up to 8 s after the broker is back, and every state beat's sweep re-sent waits that long
(issue 13, item 11: recovery after Redis lost its queue took 13 s at a 3 s lease). Here a worker
tries again every second, so a broker that comes back is used within a second. One connection
attempt a second per worker is no load for a broker that is down.

Mingle is off (as with `celery worker --without-mingle`): at every start and every reconnection it
waits a second for other workers' revoked task ids and clocks, and exo_celery revokes nothing (a
cancel is a ledger transition, and a claim checks it).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

# Seconds before the first retry, added per retry, and at most between retries (kombu: 2, 2, 30).
RECONNECT = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery ships no type stubs
    """Celery's consumer, retrying a lost broker connection every second, without mingle
    (`app.conf.worker_consumer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["without_mingle"] = True
        super().__init__(*args, **kwargs)

    def ensure_connected(self, conn: Any) -> Any:
        # Celery calls conn.ensure_connection(errback, max_retries, callback=...) with kombu's intervals;
        # an instance attribute adds ours for this call only.
        conn.ensure_connection = partial(type(conn).ensure_connection, conn, **RECONNECT)
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection
