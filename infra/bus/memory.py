"""`InMemoryBus`: the log bus kept in dicts, for unit tests and single-process runs.

It follows the same group rules as the durable `SqliteLogBus` (see `infra.bus._log`), so a test
that passes here exercises the semantics production relies on. `published(topic)` shows what was
published, so tests assert on outcomes rather than on calls.
"""

from __future__ import annotations

from typing import Any

from events.bus import Message
from infra.bus._log import LogBus, LogStorage, Member, retention_cut


class _Partition:
    """One partition's log: `start` is the offset of its first retained message."""

    def __init__(self) -> None:
        self.start = 0
        self.messages: list[Message] = []

    @property
    def end(self) -> int:
        return self.start + len(self.messages)


class MemoryLogStorage(LogStorage):
    """Everything in dicts; only this process writes, so fetches wake on notification alone."""

    poll_interval_s = None

    def __init__(self) -> None:
        self._topics: dict[str, list[_Partition]] = {}
        self._offsets: dict[tuple[str, str, int], int] = {}
        self._members: dict[str, dict[str, tuple[Member, int]]] = {}

    async def create_topic(self, topic: str, partitions: int) -> int:
        return len(self._topics.setdefault(topic, [_Partition() for _ in range(partitions)]))

    async def append(
        self, topic: str, partition: int, value: bytes, key: bytes | None,
        headers: tuple[tuple[str, bytes], ...], timestamp_ms: int,
    ) -> int:
        log = self._topics[topic][partition]
        offset = log.end
        log.messages.append(Message(topic, partition, offset, value, key, headers, timestamp_ms))
        return offset

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Message]:
        log = self._topics[topic][partition]
        first = max(offset - log.start, 0)
        return log.messages[first : first + limit]

    async def seed_offsets(self, group_id: str, topic: str, *, at_end: bool) -> None:
        for partition, log in enumerate(self._topics[topic]):
            self._offsets.setdefault((group_id, topic, partition), log.end if at_end else log.start)

    async def committed(self, group_id: str, topic: str, partition: int) -> int | None:
        return self._offsets.get((group_id, topic, partition))

    async def commit(self, group_id: str, topic: str, partition: int, offset: int) -> None:
        key = (group_id, topic, partition)
        self._offsets[key] = max(offset, self._offsets.get(key, offset))

    async def heartbeat(self, group_id: str, member: Member, expires_ms: int) -> None:
        self._members.setdefault(group_id, {})[member.member_id] = (member, expires_ms)

    async def leave(self, group_id: str, member_id: str) -> None:
        self._members.get(group_id, {}).pop(member_id, None)

    async def members(self, group_id: str, now_ms: int) -> list[Member]:
        return [member for member, expires_ms in self._members.get(group_id, {}).values() if expires_ms > now_ms]

    async def prune(self, older_than_ms: int, *, max_messages: int | None = None) -> int:
        floors: dict[tuple[str, int], int] = {}
        for (_group, topic, partition), offset in self._offsets.items():
            floors[topic, partition] = min(offset, floors.get((topic, partition), offset))
        deleted = 0
        for (topic, partition), floor in floors.items():
            log = self._topics[topic][partition]
            first_young = next((m.offset for m in log.messages if (m.timestamp_ms or 0) >= older_than_ms), None)
            cut = retention_cut(floor=floor, first_young=first_young, end=log.end, max_messages=max_messages)
            drop = 0 if cut is None else max(0, min(cut - log.start, len(log.messages)))
            del log.messages[:drop]
            log.start += drop
            deleted += drop
        return deleted

    async def describe(self) -> dict[str, Any]:
        return {"topics": len(self._topics), "groups": len({group for group, _, _ in self._offsets})}

    def published(self, topic: str) -> list[Message]:
        return [m for log in self._topics.get(topic, []) for m in log.messages]


class InMemoryBus(LogBus):
    """The in-process bus: Kafka-like topics, partitions and consumer groups, nothing on disk."""

    adapter_name = "memory"

    def __init__(self, *, partitions: int = 1, session_timeout_s: float = 10.0) -> None:
        self._memory = MemoryLogStorage()
        super().__init__(self._memory, partitions=partitions, session_timeout_s=session_timeout_s)

    def published(self, topic: str) -> list[Message]:
        """Every retained message of `topic`, partition by partition in offset order."""
        return self._memory.published(topic)
