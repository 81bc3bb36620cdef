"""Entry point: `celery -A worker.app worker [-Q exo.<namespace>.<NodeName>,...]` (see README.md here)."""
