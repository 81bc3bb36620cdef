"""Side-by-side benchmark of exo_celery against plain Celery (issue 5); run `python -m bench.run`."""
