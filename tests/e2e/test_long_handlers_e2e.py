"""Handlers longer than the broker's `max_poll_interval_ms`, on the real broker: the runner keeps
polling with its partitions paused while it is full, so the member never leaves its group and no
message is delivered twice."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from events import ObjectCreated, Topics, make
from functions.runtime.runner import Function, Runner, publish
from infra.bus.kafka import KafkaBus

pytestmark = pytest.mark.e2e
MAX_POLL_INTERVAL_MS = 1500
HANDLER_S = 4.0


async def test_a_handler_slower_than_max_poll_interval_causes_no_rebalance_and_no_redelivery(kafka_bootstrap):
    topics = Topics(f"long{uuid.uuid4().hex[:8]}")
    seen: list[str] = []
    outcomes: list[str] = []

    async def slow(event):
        seen.append(event.payload.key)
        await asyncio.sleep(HANDLER_S)
        return []

    async with KafkaBus(kafka_bootstrap, session_timeout_ms=3000, max_poll_interval_ms=MAX_POLL_INTERVAL_MS) as bus:
        await bus.ensure_topics(topics.all())
        runner = Runner(bus=bus, topics=topics, functions=[Function("slow", slow, frozenset({"ObjectCreated"}))], deps={},
                        concurrency=1, on_processed=lambda f, m, o: outcomes.append(o))
        await runner.start()
        try:
            [consumer] = list(bus._consumers)
            coordinator = consumer._consumer._coordinator
            generation = coordinator.generation
            await publish(bus, topics, *(make(ObjectCreated(bucket="docs", key=f"{i}.txt", size=1, source="s3"), namespace="acme")
                                         for i in range(2)))
            deadline = time.monotonic() + 60
            while len(outcomes) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # a redelivery, had there been a rebalance, would show by now
            assert coordinator.generation == generation, "the member left its group and joined again"
        finally:
            await runner.stop()
    assert outcomes == ["ok", "ok"]
    assert sorted(seen) == ["0.txt", "1.txt"], seen  # each once: nothing redelivered
    assert runner.states()["slow"]["restarts"] == 0
