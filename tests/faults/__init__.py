"""Fault-injection and bad-input suite (issue 6): real PostgreSQL, Redis, RabbitMQ, workers and beat."""
