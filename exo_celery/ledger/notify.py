"""Run ends pushed to waiters: one listener per process and ledger, shared by every waiter in it.

PostgreSQL: the statement that ends a run (or cancels it) also calls `pg_notify(CHANNEL, run_id)`;
the notification is delivered when that transaction commits, so a waiter woken by it reads the run
already terminal. One thread per process holds one `LISTEN` connection (psycopg's `notifies()`) and
wakes the subscriptions of the run named in each payload. It closes the connection a few seconds
after its last subscription ends, and reconnects (waking every subscription, since notifications
sent meanwhile are lost) when the connection drops.

SQLite (embedded): there is no notification between processes, so one thread per process asks the
ledger every `SQLITE_POLL` seconds whether it changed (`PRAGMA data_version`, no table read) and,
only then, which subscribed runs are terminal, in one query.

Either way a subscription is a hint, not the truth: a waiter re-reads the run after every wake-up
and also every few seconds without one (`FALLBACK_POLL`), so a lost notification costs latency,
never a hang.

    with subscribe(url, run_id) as sub:   # listening before the first read: no end can be missed
        while not terminal(read_run()):
            sub.wait_sync(FALLBACK_POLL)   # or `await sub.wait(...)` in any event loop
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from typing import Any
from urllib.parse import quote

from sqlalchemy import Text, cast, func
from sqlalchemy.engine import make_url

from ..status import TERMINAL_RUNS

CHANNEL = "exo_run_ended"
"""The PostgreSQL notification channel; the payload is the run id."""

FALLBACK_POLL = 2.0
"""Seconds a waiter waits for a notification before it reads the ledger anyway."""

SQLITE_POLL = 0.01
"""Seconds between the embedded ledger's change checks (one `PRAGMA data_version` each)."""

LINGER = 5.0
"""Seconds a listener stays connected after its last subscription ends (back-to-back waits reuse it)."""

READY_TIMEOUT = 5.0
"""Seconds `subscribe` waits for the listener to be listening; past that, waiters fall back to polling."""


def notify_run_ended(run_id: Any) -> Any:
    """SQL expression: notify the waiters of `run_id` (on commit). PostgreSQL only; text, not void."""
    return cast(func.pg_notify(CHANNEL, run_id), Text)


class Subscription:
    """A hint that a run may have ended, settable from any thread, awaitable from any event loop."""

    def __init__(self, hub: _Hub, run_id: str | None) -> None:
        self.run_id = run_id
        self._hub = hub
        self._lock = threading.Lock()
        self._flag = threading.Event()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.ended: set[str] = set()  # run ids notified since the last `clear` (for run_id=None)

    def fire(self, run_id: str | None = None) -> None:
        """Wake the waiter (called by the listener thread)."""
        with self._lock:
            if run_id is not None:
                self.ended.add(run_id)
            self._flag.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed
                pass

    def clear(self) -> None:
        """Forget earlier wake-ups: call it just before reading the ledger, so none is missed."""
        with self._lock:
            self._flag.clear()
            self.ended.clear()

    def wait_sync(self, timeout: float | None) -> bool:
        """Block until woken or `timeout` seconds; True if woken."""
        return self._flag.wait(timeout)

    async def wait(self, timeout: float | None) -> bool:
        """Wait in the running event loop until woken or `timeout` seconds; True if woken."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._flag.is_set():
                return True
            self._futures.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._lock:
                if (loop, future) in self._futures:
                    self._futures.remove((loop, future))
        return self._flag.is_set()

    @property
    def listening(self) -> threading.Event:
        """Set while this process's listener is listening (wait on it before the first read)."""
        return self._hub.ready

    def close(self) -> None:
        """Stop listening for this run."""
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Hub:
    """The subscriptions of one process for one ledger, and the thread that wakes them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._subs: dict[str | None, set[Subscription]] = {}
        self._thread: threading.Thread | None = None
        self._idle_since = time.monotonic()
        self.ready = threading.Event()  # set while notifications (or change checks) are flowing

    def subscribe(self, run_id: str | None, block: bool = True) -> Subscription:
        sub = Subscription(self, run_id)
        with self._lock:
            self._subs.setdefault(run_id, set()).add(sub)
            if self._thread is None or not self._thread.is_alive():
                self.ready.clear()
                self._thread = threading.Thread(target=self._run, name=f"exo-{type(self).__name__}", daemon=True)
                self._thread.start()
        if block:
            self.ready.wait(READY_TIMEOUT)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.run_id]
            if not self._subs:
                self._idle_since = time.monotonic()

    def run_ids(self) -> list[str]:
        with self._lock:
            return [r for r in self._subs if r is not None]

    def dispatch(self, run_id: str) -> None:
        """Wake the subscriptions of `run_id` and those of every run."""
        with self._lock:
            subs = [*self._subs.get(run_id, ()), *self._subs.get(None, ())]
        for sub in subs:
            sub.fire(run_id)

    def wake_all(self) -> None:
        """Wake every subscription (notifications may have been lost: each waiter reads the ledger)."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for sub in subs:
            sub.fire()

    def should_stop(self) -> bool:
        """True (and the thread forgotten) once no subscription has existed for LINGER seconds."""
        with self._lock:
            if self._subs or time.monotonic() - self._idle_since < LINGER:
                return False
            self._thread = None  # the next `subscribe` starts another thread
            return True

    def not_ready(self) -> None:
        """The calling thread stopped listening (a newer listener thread keeps its own readiness)."""
        with self._lock:
            if self._thread is threading.current_thread():
                self.ready.clear()

    def _run(self) -> None:
        raise NotImplementedError


class _PostgresHub(_Hub):
    """LISTEN on one psycopg connection (autocommit), reconnecting with a back-off while anyone waits."""

    def _run(self) -> None:
        import psycopg

        # The ledger's SQLAlchemy URL, as libpq takes it (the password stays inside this process).
        conninfo = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = 0.1
        while not self.should_stop():
            try:
                conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
            except psycopg.Error:
                time.sleep(backoff)
                backoff = min(backoff * 2, FALLBACK_POLL)
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                backoff = 0.1
                self.ready.set()
                self.wake_all()  # a run that ended before this LISTEN (after a reconnect) is read again
                while not self.should_stop():
                    for note in conn.notifies(timeout=0.5):
                        self.dispatch(note.payload)
            except psycopg.Error:
                pass  # the connection dropped (server restart, pg_terminate_backend): connect again
            finally:
                self.not_ready()
                conn.close()


class _SQLiteHub(_Hub):
    """Checks the embedded ledger for changes every SQLITE_POLL seconds; reads statuses only after one."""

    def _run(self) -> None:
        path = make_url(self.url).database or ""
        terminal = [s.value for s in TERMINAL_RUNS]
        conn: sqlite3.Connection | None = None
        version = None
        self.ready.set()  # nothing is missed from here: each check below, or its failure, wakes the waiters
        while not self.should_stop():
            try:
                if conn is None:  # read-write, never create: the ledger's engine creates and migrates it
                    uri = f"file:{quote(path)}?mode=rw"
                    conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
                    version = None  # the first check reads every subscribed run
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != version:
                    version = now
                    ids = self.run_ids()
                    for start in range(0, len(ids), 500):
                        chunk = ids[start : start + 500]
                        marks = ",".join("?" * len(chunk))
                        rows = conn.execute(
                            f"SELECT id FROM exo_runs WHERE id IN ({marks}) AND status IN (?, ?, ?)",
                            [*chunk, *terminal],
                        ).fetchall()
                        for (run_id,) in rows:
                            self.dispatch(run_id)
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                conn = None
                self.wake_all()
                time.sleep(10 * SQLITE_POLL)  # not created yet, or busy: try again soon
                continue
            time.sleep(SQLITE_POLL)
        if conn is not None:
            conn.close()


_hubs: dict[tuple[int, str], _Hub] = {}
_hubs_lock = threading.Lock()


def hub(url: str) -> _Hub:
    """This process's listener for the ledger at `url` (a forked child gets its own)."""
    key = (os.getpid(), url)
    with _hubs_lock:
        found = _hubs.get(key)
        if found is None:
            found = _hubs[key] = (_SQLiteHub if url.startswith("sqlite") else _PostgresHub)(url)
        return found


def subscribe(url: str, run_id: str | None = None, *, block: bool = True) -> Subscription:
    """Be woken when the run `run_id` (None: any run) of the ledger at `url` ends.

    Blocks until the process's listener is listening (at most READY_TIMEOUT seconds), so a read
    of the ledger made after this returns cannot miss the run's end; with `block=False` it returns
    at once and the caller waits on `sub.listening` itself (e.g. in a thread, from async code).
    Close the subscription when done (it is a context manager).
    """
    return hub(url).subscribe(run_id, block)
