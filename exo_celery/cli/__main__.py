"""`python -m exo_celery.cli` runs the command line."""

from .commands import main

main()
