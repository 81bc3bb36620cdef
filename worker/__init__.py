"""Entry point: `celery -A worker.app worker -Q exo.<namespace>` (see README.md here)."""
