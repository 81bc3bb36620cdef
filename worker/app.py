"""`celery -A worker.app worker`, kept for existing deployments: the same app as `exo_celery.worker_app`.

New deployments use `celery -A exo_celery.worker_app worker`, which works from an installed package.
"""

from exo_celery.worker_app import app, runtime

__all__ = ["app", "runtime"]
