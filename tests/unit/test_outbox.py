"""The transactional outbox (infra/outbox.py) on the fakes: a state change and its events are
stored together or not at all, the relay delivers every stored event in order at least once, a
bus outage loses nothing, and one relay at a time holds the lease across processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from events import Topics, codec
from events.envelope import make
from events.errors import TransientError
from events.payloads import ObjectCreated
from infra.bus.memory import InMemoryBus
from infra.catalog.base import Insert, Update, WriteConflict
from infra.catalog.memory import MemoryCatalog
from infra.outbox import LEASES, OUTBOX, RELAY_LEASE, Outbox

pytestmark = pytest.mark.unit

TOPICS = Topics("t")


def created(key: str, namespace: str = "acme"):
    return make(ObjectCreated(bucket="docs", key=key, size=1, source="upload"), namespace=namespace)


@pytest.fixture
async def ports() -> AsyncIterator[tuple[MemoryCatalog, InMemoryBus]]:
    async with MemoryCatalog() as catalog, InMemoryBus() as bus:
        await bus.ensure_topics(TOPICS.all())
        yield catalog, bus


def keys_on_bus(bus: InMemoryBus) -> list[str]:
    return [codec.decode(m.value).payload.key for m in bus.published(TOPICS.objects)]


async def test_a_change_and_its_events_are_stored_together_and_relayed_in_order(ports) -> None:
    catalog, bus = ports
    await catalog.insert("uploads", "u1", {"status": "AWAITING"})
    outbox = Outbox(catalog, bus, TOPICS, poll_s=0.01)
    outbox.start()
    try:
        [changed] = await outbox.commit([Update("uploads", "u1", {"status": "CONFIRMED"}, expect={"status": "AWAITING"})],
                                        [created("a"), created("b")])
        await outbox.publish(created("c"))
        assert changed["status"] == "CONFIRMED"
        await outbox.flush(timeout_s=5)
    finally:
        await outbox.stop()
    assert keys_on_bus(bus) == ["a", "b", "c"]
    assert [m.key for m in bus.published(TOPICS.objects)] == [b"acme"] * 3  # keyed by namespace, as the Publisher does
    assert await catalog.count(OUTBOX) == 0


async def test_a_change_that_cannot_apply_queues_no_event(ports) -> None:
    catalog, bus = ports
    await catalog.insert("uploads", "u1", {"status": "CONFIRMED"})
    outbox = Outbox(catalog, bus, TOPICS)
    with pytest.raises(WriteConflict):
        await outbox.commit([Update("uploads", "u1", {"status": "CONFIRMED"}, expect={"status": "AWAITING"})], [created("a")])
    assert await outbox.pending() == 0


async def test_events_stored_while_the_bus_is_down_are_relayed_once_it_is_back(ports, monkeypatch) -> None:
    catalog, bus = ports
    real_publish = bus.publish
    down = True

    async def flaky(*args, **kwargs):
        if down:
            raise TransientError("bus unreachable")
        await real_publish(*args, **kwargs)

    monkeypatch.setattr(bus, "publish", flaky)
    outbox = Outbox(catalog, bus, TOPICS, poll_s=0.01)
    outbox.start()
    try:
        for key in "abc":
            await outbox.publish(created(key))
        await asyncio.sleep(0.3)
        assert await outbox.pending() == 3 and keys_on_bus(bus) == []
        down = False
        await outbox.flush(timeout_s=15)
    finally:
        await outbox.stop()
    assert keys_on_bus(bus) == ["a", "b", "c"]


async def test_a_relay_that_dies_between_publishing_and_deleting_publishes_again_with_the_same_ids(ports) -> None:
    catalog, bus = ports
    outbox = Outbox(catalog, bus, TOPICS)
    event = created("a")
    await outbox.publish(event)
    real_transact = catalog.transact

    async def crash_on_delete(writes):
        raise RuntimeError("killed")

    catalog.transact = crash_on_delete  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await outbox.relay_once()
    catalog.transact = real_transact  # type: ignore[method-assign]
    assert await outbox.relay_once() == 1
    ids = [codec.decode(m.value).event_id for m in bus.published(TOPICS.objects)]
    assert ids == [event.event_id, event.event_id]  # at least once; the consumer's idempotency sees one event


async def test_one_relay_holds_the_lease_and_a_dead_holder_is_replaced_at_once(ports) -> None:
    catalog, bus = ports
    first, second = Outbox(catalog, bus, TOPICS, poll_s=0.01), Outbox(catalog, bus, TOPICS, poll_s=0.01)
    assert await first._take_lease() is True
    assert await second._take_lease() is False  # a live holder whose lease has not run out
    await catalog.update(LEASES, RELAY_LEASE, {"owner": f"{first.owner.split(':')[0]}:999999999:dead"})  # its process is gone
    assert await second._take_lease() is True
    assert (await catalog.get(LEASES, RELAY_LEASE))["owner"] == second.owner


async def test_events_stored_by_another_process_are_relayed_by_the_lease_holder(ports) -> None:
    catalog, bus = ports
    relay = Outbox(catalog, bus, TOPICS, poll_s=0.01)
    writer = Outbox(catalog, bus, TOPICS)  # another process's outbox: never started
    relay.start()
    try:
        await writer.commit([Insert("uploads", "u1", {})], [created("x")])
        for _ in range(200):
            if keys_on_bus(bus):
                break
            await asyncio.sleep(0.01)
    finally:
        await relay.stop()
    assert keys_on_bus(bus) == ["x"]
