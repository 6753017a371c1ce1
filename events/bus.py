"""The EventBus port: topics of bytes, consumer groups, commit after processing.

The bus moves bytes, not envelopes: the runner needs the original bytes to dead-letter a message
it cannot decode. Delivery is at least once: a consumer that stops before `commit()` gets the
uncommitted messages again on its next subscription with the same group.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from events.lifecycle import Lifecycle


@dataclass(frozen=True)
class Message:
    """One record read from a topic."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Consumer(abc.ABC):
    """A member of a consumer group, reading one or more topics."""

    @abc.abstractmethod
    async def fetch(self, *, max_records: int = 100, timeout_s: float = 1.0) -> list[Message]:
        """Next messages after the last ones fetched; [] when none arrive within the timeout."""

    @abc.abstractmethod
    async def commit(self, message: Message) -> None:
        """Mark `message` and every earlier one on its partition as done for this group."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group. Uncommitted messages will be delivered again to the group."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop handing out messages while staying in the group: `fetch` keeps being called (it
        counts as polling, so a broker never takes this member for dead) and returns []. Partitions
        assigned later are paused too. Messages not yet fetched stay where they are."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Hand out messages again, from where fetching stopped."""

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class EventBus(Lifecycle, abc.ABC):
    """Publish bytes to topics and consume them in groups."""

    @abc.abstractmethod
    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the topics if they do not exist (idempotent)."""

    @abc.abstractmethod
    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Append one message; returns once the bus acknowledged it (durably, where it can)."""

    @abc.abstractmethod
    async def subscribe(
        self, topics: Sequence[str], *, group_id: str, from_beginning: bool = True
    ) -> Consumer:
        """Join `group_id`. A new group starts at the earliest message when `from_beginning`,
        else at the end; a known group resumes after its last committed offset."""
