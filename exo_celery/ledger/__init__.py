"""The ledger: tables, engines, and every SQL statement exo_celery runs."""
