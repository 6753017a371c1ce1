"""The log-bus core behind `InMemoryBus` and `SqliteLogBus`: one set of group rules, two storages.

A topic is a fixed number of partitions; a partition is an append-only log whose offsets count up
from 0. A keyed message goes to the partition its key hashes to (stable across processes), a keyless
one to the next partition in turn. A consumer group keeps one committed offset per partition.

The live members of a group share its partitions the way Kafka's assignors do: partition p of a
topic belongs to the (p mod n)-th oldest of the n members subscribed to that topic. A member that
joins while every partition is taken waits as a standby; a member that closes (or whose process
dies, or whose heartbeat lapses) hands its partitions to the others, who resume from the committed
offsets. Messages a member fetched but did not commit are therefore delivered again to the group's
next fetcher: at least once, as the port promises.

The core owns these rules; a `LogStorage` only stores, one atomic step per method.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import os
import socket
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from events.bus import Consumer, EventBus, Message
from events.errors import NotConnected, TransientError
from events.lifecycle import Health

log = structlog.get_logger("sluice.bus")

_HOST = socket.gethostname()

TopicPartition = tuple[str, int]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Member:
    """One consumer in a group, as the storage keeps it between heartbeats."""

    member_id: str
    topics: frozenset[str]
    joined_ms: int
    host: str
    pid: int


class LogStorage(abc.ABC):
    """Where a log bus keeps topics, messages, committed offsets and group members."""

    #: How often a waiting fetch looks again for writes made by other processes; None when only
    #: this process can write, so waking on its own publishes is enough.
    poll_interval_s: float | None = None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def create_topic(self, topic: str, partitions: int) -> int:
        """Create `topic` with `partitions` unless it exists; return its partition count."""

    @abc.abstractmethod
    async def append(
        self, topic: str, partition: int, value: bytes, key: bytes | None,
        headers: tuple[tuple[str, bytes], ...], timestamp_ms: int,
    ) -> int:
        """Append one message durably; return its offset."""

    @abc.abstractmethod
    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        """Up to `limit` messages from `offset` on, in offset order (skipping pruned ones)."""

    @abc.abstractmethod
    async def seed_offsets(self, group_id: str, topic: str, *, at_end: bool) -> None:
        """Give each partition of `topic` that `group_id` has no committed offset for one: its
        earliest retained offset, or its end when `at_end`. Existing offsets stay."""

    @abc.abstractmethod
    async def committed(self, group_id: str, topic: str, partition: int) -> int | None:
        """The offset of the next message the group has to process on this partition."""

    @abc.abstractmethod
    async def commit(self, group_id: str, topic: str, partition: int, offset: int) -> None:
        """Raise the committed offset to `offset`; a lower offset leaves it as it is."""

    @abc.abstractmethod
    async def heartbeat(self, group_id: str, member: Member, expires_ms: int) -> None:
        """Add `member` to the group or extend its lease to `expires_ms`."""

    @abc.abstractmethod
    async def leave(self, group_id: str, member_id: str) -> None:
        """Remove a member from the group."""

    @abc.abstractmethod
    async def members(self, group_id: str, now_ms: int) -> list[Member]:
        """The members whose lease runs past `now_ms`."""

    @abc.abstractmethod
    async def prune(self, older_than_ms: int, *, max_messages: int | None = None) -> int:
        """Retention: delete, on each partition, the oldest messages that every group with a committed
        offset on it has committed past (partitions no group reads keep everything), as long as they
        are stamped before `older_than_ms` or the partition holds more than `max_messages`. Only a
        prefix of a partition goes, so offsets never change and what remains stays contiguous; see
        `retention_cut`. Return how many were deleted."""

    @abc.abstractmethod
    async def describe(self) -> dict[str, Any]:
        """Facts for `health()`."""


def retention_cut(
    *, floor: int | None, first_young: int | None, end: int, max_messages: int | None
) -> int | None:
    """The first offset of a partition that retention keeps (everything before it may go), or None
    when the partition keeps everything.

    `floor` is the lowest offset committed by the groups that read the partition (None: no group
    does: a topic nobody consumes keeps its messages), `first_young` the first offset stamped at or
    after the age limit (None: every message is old), `end` the next offset to be written. A message
    goes when it is consumed (below `floor`) and either old (before `first_young`) or over the cap
    (more than `max_messages` after it)."""
    if floor is None:
        return None
    by_age = end if first_young is None else first_young
    by_size = end - max_messages if max_messages is not None else 0
    return min(floor, max(by_age, by_size))


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a key belongs to: the same in every process (unlike `hash()`)."""
    return zlib.crc32(key) % partitions


def owned_partitions(
    me: str, members: Sequence[Member], topics: Sequence[str], partition_counts: dict[str, int]
) -> list[TopicPartition]:
    """The partitions `me` owns: partition p of a topic goes to the (p mod n)-th oldest of the n
    members subscribed to it."""
    ordered = sorted(members, key=lambda m: (m.joined_ms, m.member_id))
    owned: list[TopicPartition] = []
    for topic in topics:
        readers = [m.member_id for m in ordered if topic in m.topics]
        owned += [(topic, p) for p in range(partition_counts[topic]) if readers and readers[p % len(readers)] == me]
    return owned


def _process_alive(member: Member) -> bool:
    """False only for a member whose process on this host is gone (a crash: no lease to wait out)."""
    if os.name != "posix" or member.host != _HOST or member.pid == os.getpid():
        return True
    try:
        os.kill(member.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LogBus(EventBus):
    """An `EventBus` over a `LogStorage`. Subclasses pick the storage and the adapter name."""

    def __init__(self, storage: LogStorage, *, partitions: int = 1, session_timeout_s: float = 10.0) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._storage = storage
        self._default_partitions = partitions
        self.session_timeout_s = session_timeout_s
        self._partition_counts: dict[str, int] = {}
        self._next_partition: dict[str, itertools.count[int]] = {}
        self._consumers: set[LogConsumer] = set()
        self._changed: asyncio.Condition | None = None
        self._version = 0

    async def _connect(self) -> None:
        await self._storage.open()
        self._changed = asyncio.Condition()  # made here: it belongs to the loop that connects

    async def _close(self) -> None:
        for consumer in list(self._consumers):
            with contextlib.suppress(TransientError):
                await consumer.close()
        await self._storage.close()
        self._partition_counts.clear()

    async def _health(self) -> Health:
        try:
            detail = await self._storage.describe()
        except TransientError as exc:
            return Health(status="down", adapter=self.adapter_name, detail={"error": exc.message})
        return Health(status="ok", adapter=self.adapter_name, detail=detail)

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        self._require_connected()
        for topic in topics:
            await self._partitions_of(topic)

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self._require_connected()
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"the bus carries bytes, not {type(value).__name__}")
        partitions = await self._partitions_of(topic)
        if key is not None:
            partition = partition_for(key, partitions)
        else:
            partition = next(self._next_partition.setdefault(topic, itertools.count())) % partitions
        await self._storage.append(
            topic, partition, bytes(value), key, tuple((name, bytes(v)) for name, v in headers), now_ms()
        )
        await self._notify()

    async def subscribe(
        self, topics: Sequence[str], *, group_id: str, from_beginning: bool = True
    ) -> Consumer:
        self._require_connected()
        topics = list(dict.fromkeys(topics))
        for topic in topics:
            await self._partitions_of(topic)
            await self._storage.seed_offsets(group_id, topic, at_end=not from_beginning)
        consumer = LogConsumer(self, topics, group_id)
        await consumer._join()
        self._consumers.add(consumer)
        await self._notify()
        return consumer

    async def prune(self, older_than_s: float, *, max_messages: int | None = None) -> int:
        """Retention: delete the messages every group reading their partition has committed past
        that are older than `older_than_s`, or over `max_messages` per partition (oldest first).
        Unconsumed messages, and every message of a partition no group reads (a topic nobody
        subscribed to), stay. Offsets never change: a group from the beginning starts at the first
        message left. Returns how many were deleted. `functions/runtime/janitor.py` calls it."""
        self._require_connected()
        if max_messages is not None and max_messages < 0:
            raise ValueError("max_messages must not be negative")
        deleted = await self._storage.prune(now_ms() - int(older_than_s * 1000), max_messages=max_messages)
        log.info("bus.pruned", adapter=self.adapter_name, deleted=deleted)
        return deleted

    async def _partitions_of(self, topic: str) -> int:
        """A topic's partition count, creating the topic on first use (as Kafka brokers do)."""
        if topic not in self._partition_counts:
            self._partition_counts[topic] = await self._storage.create_topic(topic, self._default_partitions)
        return self._partition_counts[topic]

    async def _notify(self) -> None:
        """Wake every fetch waiting in this process: a message arrived or a member came or went."""
        self._version += 1
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _wait_for_change(self, seen: int, timeout_s: float) -> None:
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self._version != seen)


class LogConsumer(Consumer):
    """A member of a group on a `LogBus`; keeps its own read positions for the partitions it owns."""

    def __init__(self, bus: LogBus, topics: Sequence[str], group_id: str) -> None:
        self._bus = bus
        self._storage = bus._storage
        self.group_id = group_id
        self.topics = tuple(topics)
        self._member = Member(
            member_id=f"{group_id}-{uuid.uuid4().hex[:12]}",
            topics=frozenset(topics),
            joined_ms=now_ms(),
            host=_HOST,
            pid=os.getpid(),
        )
        self._positions: dict[TopicPartition, int] = {}
        self._turn = 0
        self._heartbeats: asyncio.Task[None] | None = None
        self._closed = False
        self._paused = False

    async def fetch(self, *, max_records: int = 100, timeout_s: float = 1.0) -> list[Message]:
        self._require_open()
        if self._paused:  # membership is kept by the heartbeats; nothing is read, positions stay
            await asyncio.sleep(timeout_s)
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        poll_s = self._storage.poll_interval_s
        while True:
            seen = self._bus._version
            messages = await self._read(max_records)
            remaining = deadline - loop.time()
            if messages or remaining <= 0:
                return messages
            await self._bus._wait_for_change(seen, remaining if poll_s is None else min(poll_s, remaining))

    async def commit(self, message: Message) -> None:
        self._require_open()
        await self._storage.commit(self.group_id, message.topic, message.partition, message.offset + 1)

    async def pause(self) -> None:
        self._require_open()
        self._paused = True

    async def resume(self) -> None:
        self._require_open()
        self._paused = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._consumers.discard(self)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        try:
            await self._storage.leave(self.group_id, self._member.member_id)
        finally:
            await self._bus._notify()

    async def _join(self) -> None:
        await self._beat()
        self._heartbeats = asyncio.create_task(self._keep_alive(), name=f"heartbeat {self._member.member_id}")

    async def _beat(self) -> None:
        expires_ms = now_ms() + int(self._bus.session_timeout_s * 1000)
        await self._storage.heartbeat(self.group_id, self._member, expires_ms)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._bus.session_timeout_s / 3)
            try:
                await self._beat()
            except TransientError as exc:
                log.warning("bus.heartbeat_failed", group=self.group_id, error=exc.message)

    async def _read(self, max_records: int) -> list[Message]:
        await self._rebalance()
        owned = list(self._positions)
        if not owned:
            return []
        self._turn = (self._turn + 1) % len(owned)  # no partition starves the others
        messages: list[Message] = []
        for topic, partition in owned[self._turn:] + owned[: self._turn]:
            if len(messages) >= max_records:
                break
            messages += await self._storage.read(
                topic, partition, self._positions[topic, partition], max_records - len(messages)
            )
        # Move on only once every read succeeded: a failed fetch must not skip what it had read.
        for message in messages:
            self._positions[message.topic, message.partition] = message.offset + 1
        return messages

    async def _rebalance(self) -> None:
        """Take the partitions this member owns now; drop those another member took over."""
        members = [m for m in await self._storage.members(self.group_id, now_ms()) if _process_alive(m)]
        if all(m.member_id != self._member.member_id for m in members):
            # Our lease lapsed (a stalled event loop): rejoin as the newest member.
            self._member = replace(self._member, joined_ms=now_ms())
            await self._beat()
            members.append(self._member)
        counts = {topic: await self._bus._partitions_of(topic) for topic in self.topics}
        owned = owned_partitions(self._member.member_id, members, self.topics, counts)
        positions: dict[TopicPartition, int] = {}
        for topic, partition in owned:
            position = self._positions.get((topic, partition))
            if position is None:
                position = await self._storage.committed(self.group_id, topic, partition) or 0
            positions[topic, partition] = position
        self._positions = positions

    def _require_open(self) -> None:
        if self._closed or not self._bus.connected:
            raise NotConnected(type(self).__name__)
