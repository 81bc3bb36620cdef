"""No secret in a worker's log: every record a worker process emits is redacted against the secrets it holds.

A node's `print(self.secrets.api_key)` reaches the log through Celery's stdout redirect (logger
`celery.redirected`, at WARNING); a node's own logger, a library's debug line or a traceback can quote
a secret too. So the filter sits on every handler of the process (the root logger's, Celery's task
and redirect loggers', any other), and redacts the message, its traceback and its stack against the
secret values this process has decrypted (`Worker.graph` adds them), plain or escaped (`crypto.redact`).
Output written straight to the file descriptors (a C extension, `os.write(1, ...)`) bypasses logging
and is not covered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from .crypto import redact

_secrets: set[str] = set()


def hide_in_logs(values: Iterable[str]) -> None:
    """Redact these secret values from every log record of this process from now on."""
    _secrets.update(v for v in values if v)


class RedactSecrets(logging.Filter):
    """Replaces the process's secret values in a record's message, traceback and stack by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        hidden = tuple(_secrets)
        message = record.getMessage()
        clean = redact(message, hidden)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, hidden)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, hidden)
        return True


FILTER = RedactSecrets()


def install() -> None:
    """Put the filter on every handler of every logger of this process (safe to repeat)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if FILTER not in handler.filters:
                handler.addFilter(FILTER)
    for name in ("celery.redirected", "celery.task"):  # also records that reach no handler yet
        logger = logging.getLogger(name)
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)


def _on_logging_ready(*_: Any, **__: Any) -> None:
    install()


def connect() -> None:
    """Install the filter whenever Celery sets up a worker's logging, and in each pool process."""
    for signal in (after_setup_logger, after_setup_task_logger, worker_process_init):
        signal.connect(_on_logging_ready, weak=False, dispatch_uid=f"exo_celery.log_redaction.{signal.name}")
    install()
