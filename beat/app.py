"""`celery -A beat.app beat`, kept for existing deployments: the same app as `exo_celery.beat_app`.

New deployments use `celery -A exo_celery.beat_app beat`, which works from an installed package.
"""

from exo_celery.beat_app import app

__all__ = ["app"]
