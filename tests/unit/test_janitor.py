"""The bus janitor prunes a log bus with the platform's retention, and leaves other buses alone."""

from __future__ import annotations

import asyncio

import pytest

from functions.runtime.janitor import BusJanitor
from infra.bus.memory import InMemoryBus

pytestmark = pytest.mark.unit


async def _consume(bus: InMemoryBus, topic: str, group: str, count: int) -> None:
    async with await bus.subscribe([topic], group_id=group) as consumer:
        messages = await consumer.fetch(max_records=count, timeout_s=1.0)
        await consumer.commit(messages[-1])


async def test_a_pass_prunes_consumed_messages_over_the_cap_and_keeps_the_rest():
    async with InMemoryBus() as bus:
        await bus.ensure_topics(["t", "dead-letters"])
        for i in range(6):
            await bus.publish("t", f"m{i}".encode())
        await bus.publish("dead-letters", b"letter")
        await _consume(bus, "t", "g", 4)

        janitor = BusJanitor(bus, retention_s=3600, max_messages=1)
        assert await janitor.prune() == 4  # over the cap, but only what the group consumed
        assert [m.value for m in bus.published("t")] == [b"m4", b"m5"]
        assert [m.value for m in bus.published("dead-letters")] == [b"letter"]  # no group reads it


async def test_run_prunes_at_once_and_stops_when_told():
    async with InMemoryBus() as bus:
        await bus.ensure_topics(["t"])
        await bus.publish("t", b"old")
        await _consume(bus, "t", "g", 1)
        await asyncio.sleep(0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(BusJanitor(bus, retention_s=0, max_messages=None, interval_s=3600).run(stop))
        for _ in range(100):
            if not bus.published("t"):
                break
            await asyncio.sleep(0.01)
        assert bus.published("t") == []
        stop.set()
        await asyncio.wait_for(task, 1.0)


async def test_a_bus_with_its_own_retention_is_left_alone():
    class KafkaLike:
        pass

    janitor = BusJanitor(KafkaLike(), retention_s=0, max_messages=0)
    assert not janitor.applies
    assert await janitor.prune() == 0
    await asyncio.wait_for(janitor.run(asyncio.Event()), 1.0)  # returns at once instead of looping
