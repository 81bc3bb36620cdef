"""Waiting for a run to end: woken by the ledger's notification, reading the run anyway now and then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..errors import WaitTimeout
from ..ledger.notify import FALLBACK_POLL, READY_TIMEOUT, subscribe
from ..status import TERMINAL_RUNS, RunStatus
from .base import ledger_errors
from .checks import check_id
from .reading import Reading


@ledger_errors
class Waiting(Reading):
    """`wait` and `wait_sync` (they read the run with `get_run`)."""

    async def wait(
        self, run_id: str, timeout: float | None = None, *, poll_interval: float | None = None
    ) -> dict[str, Any]:
        """The run once it is SUCCESS, FAILED or CANCELLED; TimeoutError after `timeout` seconds.

        Woken by the ledger's notification that the run ended (`exo_celery.ledger.notify`: PostgreSQL
        LISTEN/NOTIFY, one listening connection per process; the embedded ledger checked for changes
        every 10 ms), and reading the run anyway every `poll_interval` seconds (default 2) in case a
        notification was lost.
        """
        check_id("run", run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FALLBACK_POLL if poll_interval is None else poll_interval
        sub = subscribe(self.settings.ledger_url, run_id, block=False)
        try:
            if not sub.listening.is_set():  # only the process's first waiter waits for the LISTEN
                await asyncio.to_thread(sub.listening.wait, READY_TIMEOUT)
            while True:
                sub.clear()  # before the read: an end committed after it still wakes us
                run = await self.get_run(run_id)
                if RunStatus(run["status"]) in TERMINAL_RUNS:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"run {run_id} is still {run['status']} after {timeout} s")
                await sub.wait(pause if left is None else min(pause, left))
        finally:
            sub.close()

    def wait_sync(
        self,
        run_id: str,
        timeout: float | None = None,
        *,
        poll_interval: float | None = None,
        on_read: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Blocking form of `wait` (no event loop needed); `on_read` sees the run after each read (a progress bar)."""
        check_id("run", run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FALLBACK_POLL if poll_interval is None else poll_interval
        with subscribe(self.settings.ledger_url, run_id) as sub:
            while True:
                sub.clear()
                run = self.get_run_sync(run_id)
                if on_read is not None:
                    on_read(run)
                if RunStatus(run["status"]) in TERMINAL_RUNS:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"run {run_id} is still {run['status']} after {timeout} s")
                sub.wait_sync(pause if left is None else min(pause, left))
