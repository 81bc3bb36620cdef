"""Deployment folder: `celery -A exo_celery.beat_app beat` (see README.md here); `beat.app` re-exports it."""
