"""EXPERIMENT ONLY (not committed): monkeypatches of exo_celery to measure proposed changes. BENCH_PROTO=a,b,c"""

from __future__ import annotations

import os
import time

from .nodes import NODES  # noqa: F401

ON = {p.strip() for p in os.environ.get("BENCH_PROTO", "").split(",") if p.strip()}

if "noping" in ON or "asynccommit" in ON:
    from sqlalchemy import create_engine, event

    import exo_celery.ledger.db as db

    _orig_create = db._create

    def _create(url: str):  # type: ignore[no-untyped-def]
        if url.startswith("sqlite"):
            return _orig_create(url)
        engine = create_engine(url, pool_pre_ping="noping" not in ON, pool_size=5, max_overflow=10)
        if "asynccommit" in ON:

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
                autocommit = dbapi_connection.autocommit
                dbapi_connection.autocommit = True
                dbapi_connection.execute("SET synchronous_commit TO off")
                dbapi_connection.autocommit = autocommit

        db._create_tables(engine)
        return engine

    db._create = _create

if "acclaim" in ON:
    from sqlalchemy import or_, select, update

    from exo_celery.ledger import transitions as tr
    from exo_celery.ledger.tables import runs, states
    from exo_celery.status import RunStatus

    _orig_claim = tr.Transitions.claim
    _ac: dict[int, object] = {}

    def claim(self, state_id: str, token: str):  # type: ignore[no-untyped-def]
        if self.url.startswith("sqlite"):
            return _orig_claim(self, state_id, token)
        engine = _ac.get(id(self.engine))
        if engine is None:
            engine = _ac[id(self.engine)] = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        now = time.time()
        S = tr.S
        with engine.connect() as conn:  # type: ignore[attr-defined]
            row = (
                conn.execute(
                    update(states)
                    .where(
                        states.c.id == state_id,
                        states.c.status == S.QUEUED.value,
                        states.c.due_at <= now + tr.EARLY_TOLERANCE,
                        or_(states.c.lease_until.is_(None), states.c.lease_until < now),
                    )
                    .values(
                        lease_token=token,
                        lease_until=now + self.lease_seconds,
                        attempts=states.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(*states.c)
                )
                .mappings()
                .first()
            )
            if row is not None:
                if not row["parents"]:
                    conn.execute(
                        update(runs)
                        .where(runs.c.id == row["run_id"], runs.c.status == RunStatus.PENDING.value)
                        .values(status=RunStatus.RUNNING.value, started_at=now)
                    )
                return "claimed", dict(row)
            current = conn.execute(select(states).where(states.c.id == state_id)).mappings().first()
        if current is not None and current["status"] == S.QUEUED.value and current["due_at"] > now:
            return "early", dict(current)
        return "skip", None

    tr.Transitions.claim = claim

if "nosent" in ON:
    import exo_celery.runtime as runtime

    _orig_make_app = runtime.make_app

    def make_app(settings, main="exo_celery"):  # type: ignore[no-untyped-def]
        app = _orig_make_app(settings, main)
        app.conf.task_send_sent_event = False
        return app

    runtime.make_app = make_app

if "batchpub" in ON:
    import exo_celery.celery_app as ca
    import exo_celery.tasks as tasks

    def publish(app, settings, dispatches):  # type: ignore[no-untyped-def]
        items = list(dispatches)
        if not items:
            return 0
        now = time.time()
        with app.producer_or_acquire() as producer, producer.batch():
            for d in items:
                countdown = d.due_at - now
                app.send_task(
                    ca.task_name(settings, d.namespace, d.node_name),
                    args=[d.state_id, d.run_id],
                    queue=ca.queue_name(settings, d.namespace),
                    countdown=countdown if countdown > 0.001 else None,
                    argsrepr=ca.describe(d),
                    kwargsrepr="{}",
                    producer=producer,
                )
        return len(items)

    ca.publish = publish
    tasks.publish = publish
