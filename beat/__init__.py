"""Entry point: `celery -A beat.app beat` (see README.md here)."""
