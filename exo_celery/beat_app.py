"""The Celery app of the exo_celery beat process: `celery -A exo_celery.beat_app beat`.

Its scheduler is `exo_celery.beat:ExoScheduler`, which on every tick releases delayed states that
are due, re-sends states whose worker died or whose message was lost, fires cron triggers, purges
runs past retention and records a heartbeat (the same work as `exo-celery beat`; `exo-celery beat
--check` reads the heartbeat). Any `beat_schedule` entries you add to this app still run as usual.
Configured from the environment (see config/README.md).

Run one beat per deployment; a second one is harmless (every step is a compare-and-set or a unique
insert), so a standby can run too. The library never imports this module: it is an entry point only.
"""

from __future__ import annotations

from celery import Celery

from .celery_app import make_app
from .settings import load_settings

settings = load_settings()
app: Celery = make_app(settings, main="exo_celery.beat")
app.conf.beat_scheduler = "exo_celery.beat:ExoScheduler"
# Celery beat sleeps at most this long between ticks; the sweep needs a tick at least this often.
app.conf.beat_max_loop_interval = min(5.0, settings.sweep_interval)
