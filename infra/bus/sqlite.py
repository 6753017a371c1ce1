"""`SqliteLogBus`: the durable embedded bus of `sluice up`, one SQLite file in WAL mode.

Work pending at a crash resumes after a restart: a publish returns once its transaction is synced
to disk, and committed offsets live in the same file. Several processes may publish to and consume
from one file: writes take the lock up front (`BEGIN IMMEDIATE`), offsets are allocated inside the
write transaction, and a busy file is waited for (`busy_timeout`). Group membership is kept in the
file too, with leases, so members in different processes share a group's partitions.

All SQLite work runs on one dedicated thread with its own connection, so the event loop never
blocks on disk. A fetch wakes at once on a publish from this bus and otherwise looks again every
`poll_interval_s` for other processes' writes.

Retention (`prune`, called by `functions/runtime/janitor.py`) deletes consumed messages in batches
of `PRUNE_BATCH`, each its own short transaction, so publishers in this and other processes go on
in between. A file created by this version has `auto_vacuum = INCREMENTAL`: after a prune, the
freed pages are given back to the file system (`incremental_vacuum`, `VACUUM_STEP` pages per
transaction). A file created earlier has no auto-vacuum and cannot get it without a full `VACUUM`,
which this code never runs on its own (it locks the whole file for as long as it takes); there
SQLite reuses the freed pages for later messages, so the file stops growing at its high-water
mark instead of shrinking. The write-ahead log is truncated to `JOURNAL_SIZE_LIMIT` after each
checkpoint, so one large prune does not leave a large `-wal` file behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from events.bus import Message
from events.errors import TransientError
from infra.bus._log import LogBus, LogStorage, Member, retention_cut
from infra.sqlite import immediate, open_durable

T = TypeVar("T")

PRUNE_BATCH = 5000  # messages deleted per transaction
VACUUM_STEP = 2048  # free pages returned to the file system per transaction
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes of -wal file kept after a checkpoint

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic      TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS messages (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    key       BLOB,
    value     BLOB NOT NULL,
    headers   TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id  TEXT NOT NULL,
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
CREATE TABLE IF NOT EXISTS group_members (
    group_id   TEXT NOT NULL,
    member_id  TEXT NOT NULL,
    topics     TEXT NOT NULL,
    joined_ms  INTEGER NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
"""


def _encode_headers(headers: tuple[tuple[str, bytes], ...]) -> str:
    return json.dumps([[name, base64.b64encode(value).decode()] for name, value in headers])


def _decode_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, base64.b64decode(value)) for name, value in json.loads(text))


class SqliteLogStorage(LogStorage):
    """The log in a SQLite file; every method is one step on the storage's own thread."""

    def __init__(self, path: Path, *, poll_interval_s: float = 0.05, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.poll_interval_s = poll_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-bus-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self, step: Callable[..., T], *args: Any) -> T:
        """Run one step on the storage thread; a busy or failing file is a transient error."""
        assert self._executor is not None, "storage is not open"
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, step, *args)
        except sqlite3.OperationalError as exc:
            raise TransientError(f"sqlite bus {self.path}: {exc}", details={"path": str(self.path)}) from exc

    def _open(self) -> None:
        db = open_durable(self.path, busy_timeout_s=self._busy_timeout_s)
        try:
            _make_incremental_if_new(db)
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds the lock from the start, so reads inside it stay true."""
        assert self._db is not None
        with immediate(self._db) as db:
            yield db

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    async def create_topic(self, topic: str, partitions: int) -> int:
        return await self._run(self._create_topic, topic, partitions)

    def _create_topic(self, topic: str, partitions: int) -> int:
        row = self._conn.execute("SELECT partitions FROM topics WHERE topic = ?", (topic,)).fetchone()
        if row is not None:
            return row[0]
        with self._write() as db:
            if db.execute("INSERT OR IGNORE INTO topics VALUES (?, ?)", (topic, partitions)).rowcount:
                db.executemany("INSERT INTO partitions VALUES (?, ?, 0)", [(topic, p) for p in range(partitions)])
            return db.execute("SELECT partitions FROM topics WHERE topic = ?", (topic,)).fetchone()[0]

    async def append(
        self, topic: str, partition: int, value: bytes, key: bytes | None,
        headers: tuple[tuple[str, bytes], ...], timestamp_ms: int,
    ) -> int:
        return await self._run(self._append, topic, partition, value, key, _encode_headers(headers), timestamp_ms)

    def _append(self, topic: str, partition: int, value: bytes, key: bytes | None, headers: str, timestamp_ms: int) -> int:
        with self._write() as db:
            row = db.execute(
                "UPDATE partitions SET next_offset = next_offset + 1 WHERE topic = ? AND partition = ?"
                " RETURNING next_offset - 1",
                (topic, partition),
            ).fetchone()
            if row is None:
                raise LookupError(f"no partition {partition} of topic {topic!r} in {self.path}")
            offset = row[0]
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic, partition, offset, key, value, headers, timestamp_ms),
            )
        return offset

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        return await self._run(self._read, topic, partition, offset, limit)

    def _read(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        rows = self._conn.execute(
            "SELECT offset, key, value, headers, timestamp FROM messages"
            " WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
            (topic, partition, offset, limit),
        ).fetchall()
        return [
            Message(topic, partition, offset, value, key, _decode_headers(headers), timestamp)
            for offset, key, value, headers, timestamp in rows
        ]

    async def seed_offsets(self, group_id: str, topic: str, *, at_end: bool) -> None:
        await self._run(self._seed_offsets, group_id, topic, at_end)

    def _seed_offsets(self, group_id: str, topic: str, at_end: bool) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO group_offsets (group_id, topic, partition, offset)"
                " SELECT ?, p.topic, p.partition, CASE WHEN ? THEN p.next_offset ELSE COALESCE("
                "   (SELECT MIN(m.offset) FROM messages m WHERE m.topic = p.topic AND m.partition = p.partition),"
                "   p.next_offset) END"
                " FROM partitions p WHERE p.topic = ?",
                (group_id, at_end, topic),
            )

    async def committed(self, group_id: str, topic: str, partition: int) -> int | None:
        return await self._run(self._committed, group_id, topic, partition)

    def _committed(self, group_id: str, topic: str, partition: int) -> int | None:
        row = self._conn.execute(
            "SELECT offset FROM group_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
            (group_id, topic, partition),
        ).fetchone()
        return None if row is None else row[0]

    async def commit(self, group_id: str, topic: str, partition: int, offset: int) -> None:
        await self._run(self._commit, group_id, topic, partition, offset)

    def _commit(self, group_id: str, topic: str, partition: int, offset: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO group_offsets VALUES (?, ?, ?, ?) ON CONFLICT (group_id, topic, partition)"
                " DO UPDATE SET offset = MAX(offset, excluded.offset)",
                (group_id, topic, partition, offset),
            )

    async def heartbeat(self, group_id: str, member: Member, expires_ms: int) -> None:
        await self._run(self._heartbeat, group_id, member, expires_ms)

    def _heartbeat(self, group_id: str, member: Member, expires_ms: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO group_members VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_id, member_id)"
                " DO UPDATE SET topics = excluded.topics, joined_ms = excluded.joined_ms,"
                " expires_ms = excluded.expires_ms",
                (group_id, member.member_id, json.dumps(sorted(member.topics)), member.joined_ms,
                 member.host, member.pid, expires_ms),
            )

    async def leave(self, group_id: str, member_id: str) -> None:
        await self._run(self._leave, group_id, member_id)

    def _leave(self, group_id: str, member_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM group_members WHERE group_id = ? AND member_id = ?", (group_id, member_id))

    async def members(self, group_id: str, now_ms: int) -> list[Member]:
        return await self._run(self._members, group_id, now_ms)

    def _members(self, group_id: str, now_ms: int) -> list[Member]:
        rows = self._conn.execute(
            "SELECT member_id, topics, joined_ms, host, pid FROM group_members"
            " WHERE group_id = ? AND expires_ms > ?",
            (group_id, now_ms),
        ).fetchall()
        return [
            Member(member_id, frozenset(json.loads(topics)), joined_ms, host, pid)
            for member_id, topics, joined_ms, host, pid in rows
        ]

    async def prune(self, older_than_ms: int, *, max_messages: int | None = None) -> int:
        deleted = 0
        for topic, partition, first, cut in await self._run(self._prune_plan, older_than_ms, max_messages):
            for low in range(first, cut, PRUNE_BATCH):
                deleted += await self._run(self._delete_range, topic, partition, low, min(low + PRUNE_BATCH, cut))
        if deleted:
            while await self._run(self._vacuum_step):
                pass
        return deleted

    def _prune_plan(self, older_than_ms: int, max_messages: int | None) -> list[tuple[str, int, int, int]]:
        """(topic, partition, first retained offset, first offset to keep) of each partition with
        something to delete. Commits only raise the floor, so a plan read now stays safe to apply."""
        rows = self._conn.execute(
            "SELECT p.topic, p.partition, p.next_offset,"
            " (SELECT MIN(o.offset) FROM group_offsets o WHERE o.topic = p.topic AND o.partition = p.partition),"
            " (SELECT m.offset FROM messages m WHERE m.topic = p.topic AND m.partition = p.partition"
            "   ORDER BY m.offset LIMIT 1),"
            " (SELECT m.offset FROM messages m WHERE m.topic = p.topic AND m.partition = p.partition"
            "   AND m.timestamp >= ? ORDER BY m.offset LIMIT 1)"
            " FROM partitions p",
            (older_than_ms,),
        ).fetchall()
        plan: list[tuple[str, int, int, int]] = []
        for topic, partition, end, floor, first, first_young in rows:
            cut = retention_cut(floor=floor, first_young=first_young, end=end, max_messages=max_messages)
            if cut is not None and first is not None and first < cut:
                plan.append((topic, partition, first, cut))
        return plan

    def _delete_range(self, topic: str, partition: int, low: int, high: int) -> int:
        with self._write() as db:
            return db.execute(
                "DELETE FROM messages WHERE topic = ? AND partition = ? AND offset >= ? AND offset < ?",
                (topic, partition, low, high),
            ).rowcount

    def _vacuum_step(self) -> bool:
        """Give up to `VACUUM_STEP` free pages back to the file system; True while more are left.
        A no-op (False) on a file without incremental auto-vacuum, which reuses its free pages."""
        if self._conn.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
            return False
        if not self._conn.execute("PRAGMA freelist_count").fetchone()[0]:
            return False
        # executescript steps the pragma to its end; execute() would free a single page.
        self._conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP})")
        return bool(self._conn.execute("PRAGMA freelist_count").fetchone()[0])

    async def describe(self) -> dict[str, Any]:
        return await self._run(self._describe)

    def _describe(self) -> dict[str, Any]:
        (topics,) = self._conn.execute("SELECT COUNT(*) FROM topics").fetchone()
        (groups,) = self._conn.execute("SELECT COUNT(DISTINCT group_id) FROM group_offsets").fetchone()
        return {"path": str(self.path), "topics": topics, "groups": groups}


INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def _make_incremental_if_new(db: sqlite3.Connection) -> None:
    """Give a file without tables `auto_vacuum = INCREMENTAL`. The mode can only change before
    the first table, and the WAL switch in `open_durable` has already written the header, so the
    empty file is rebuilt (`VACUUM`: instant when empty). A file with tables keeps its mode."""
    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        return
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    try:
        db.execute("VACUUM")
    except sqlite3.OperationalError:
        pass  # another process is creating the file at this moment: it works without auto-vacuum


class SqliteLogBus(LogBus):
    """The durable embedded bus: Kafka-like topics and consumer groups in one SQLite file."""

    adapter_name = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        partitions: int = 1,
        session_timeout_s: float = 10.0,
        poll_interval_s: float = 0.05,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        storage = SqliteLogStorage(self.path, poll_interval_s=poll_interval_s, busy_timeout_s=busy_timeout_s)
        super().__init__(storage, partitions=partitions, session_timeout_s=session_timeout_s)
