"""What every SQLite file of Sluice needs: a durable, multi-process-safe connection, and write
transactions that take the lock up front. Shared by the catalog and the log bus."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_durable(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection in WAL mode with `synchronous=FULL` (a write survives power loss once it
    returns) and a busy timeout; autocommit, so transactions are explicit (`immediate`). A new file
    is created 0600 (SQLite gives its -wal and -shm files the same mode): it holds every tenant's
    records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        _enable_wal(conn, busy_timeout_s)
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch the file to WAL (a no-op once it is). The switch needs an exclusive lock that SQLite
    does not wait for, so processes opening a new file at the same moment retry until the timeout."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds the write lock from its first statement to COMMIT, so what
    it reads stays true until it commits; rolled back on any error, COMMIT's own included."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
