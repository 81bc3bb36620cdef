"""Count SQL statements in worker processes (bench only): imported by `bench.nodes` when BENCH_SQL_DIR is set.

Every `before_cursor_execute` on any Engine bumps a per-process counter; pool
checkouts, pre-pings (each a round trip), commits and rollbacks are counted
too. A daemon thread started lazily in each process (so
after the prefork fork) writes the counts to `<BENCH_SQL_DIR>/<pid>.json`
every 0.2 s when they changed; the driver sums the files.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

_counts: Counter[str] = Counter()
_writer_pid = 0
_lock = threading.Lock()


_KINDS = {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "SAVEPOINT", "RELEASE"}


def _kind(statement: str) -> str:
    word = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    return word if word in _KINDS else "OTHER"


def _ensure_writer() -> None:
    global _writer_pid
    pid = os.getpid()
    if _writer_pid == pid:
        return
    with _lock:
        if _writer_pid == pid:
            return
        _writer_pid = pid
        _counts.clear()  # a forked child starts from zero
        threading.Thread(target=_write_loop, args=(pid,), name="bench-sqlcount", daemon=True).start()


def _write_loop(pid: int) -> None:
    folder = Path(os.environ["BENCH_SQL_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / f"{pid}.json", folder / f".{pid}.tmp"
    last: dict[str, int] = {}
    while True:
        time.sleep(0.2)
        now = dict(_counts)
        if now != last:
            tmp.write_text(json.dumps(now))
            tmp.replace(path)
            last = now


def _on_execute(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    _ensure_writer()
    _counts["statements"] += 1
    _counts[_kind(statement)] += 1
    if executemany:
        _counts["executemany"] += 1


def _on_checkout(*_: Any) -> None:
    _ensure_writer()
    _counts["checkouts"] += 1


def _on_commit(conn: Any) -> None:
    # An autocommit connection's statements commit on their own: no BEGIN or COMMIT is sent.
    autocommit = getattr(conn.connection.driver_connection, "autocommit", False) is True
    _counts["autocommits" if autocommit else "commits"] += 1


def _on_rollback(*_: Any) -> None:
    _counts["rollbacks"] += 1


def install(write: bool = True) -> None:
    """Listen on every Engine and Pool of this process (and of its forked children).

    With `write=False` the counts stay in `_counts` of this process (no files, no thread).
    """
    global _writer_pid
    if not write:
        _writer_pid = os.getpid()
    from sqlalchemy.engine.default import DefaultDialect

    ping = DefaultDialect._do_ping_w_event

    def counted_ping(self: Any, dbapi_connection: Any) -> Any:
        _counts["pings"] += 1
        return ping(self, dbapi_connection)

    DefaultDialect._do_ping_w_event = counted_ping  # type: ignore[method-assign]  # pre-ping round trips
    from exo_celery.ledger.direct import DirectStatement

    first = DirectStatement.first

    def counted_first(self: DirectStatement, engine: Any, params: Any) -> Any:
        # The hot statements run on psycopg directly, past SQLAlchemy's events: counted here.
        _ensure_writer()
        _counts["statements"] += 1
        _counts[_kind(self._compile(engine)[1])] += 1
        _counts["autocommits"] += 1
        return first(self, engine, params)

    DirectStatement.first = counted_first  # type: ignore[method-assign]
    event.listen(Engine, "before_cursor_execute", _on_execute)
    event.listen(Engine, "commit", _on_commit)
    event.listen(Engine, "rollback", _on_rollback)
    event.listen(Pool, "checkout", _on_checkout)


def read_totals(folder: Path) -> Counter[str]:
    """The sum of every process's counts written so far."""
    total: Counter[str] = Counter()
    for path in folder.glob("*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return total


if os.environ.get("BENCH_SQL_DIR"):
    install()
