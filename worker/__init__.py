"""Deployment folder: `celery -A exo_celery.worker_app worker` (see README.md here); `worker.app` re-exports it."""
