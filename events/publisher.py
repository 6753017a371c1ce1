"""Publishing envelopes: each on its type's topic, keyed by namespace (one tenant's events stay in
order on one partition)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from events import codec
from events.bus import EventBus
from events.envelope import AnyEnvelope
from events.topics import Topics


class Publish(Protocol):
    """What handlers, services and routes publish through: `platform.publish`, the outbox
    (`infra/outbox.py`). `commit` stores catalog writes and the events they imply together."""

    async def __call__(self, *events: AnyEnvelope) -> None: ...

    async def commit(self, writes: Sequence[Any] = (), events: Sequence[AnyEnvelope] = ()) -> list[Any]: ...


class Publisher:
    """The publishing port handlers, services and REST routes take: `await publish(event, ...)`.
    Handlers publish through it only what must go out before they return (progress of a long
    command); what they return is published by the runner once they succeeded."""

    def __init__(self, bus: EventBus, topics: Topics) -> None:
        self.bus, self.topics = bus, topics

    async def __call__(self, *events: AnyEnvelope) -> None:
        for ev in events:
            await self.bus.publish(self.topics.for_type(ev.type), codec.encode(ev), key=(ev.namespace or "").encode() or None)


__all__ = ["Publish", "Publisher"]
