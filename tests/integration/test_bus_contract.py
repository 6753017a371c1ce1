"""The EventBus contract, run against every adapter: the in-memory fake, the durable SQLite log and
Kafka (the embedded Tansu broker). Then what only the log buses promise (partitions shared among a
group's members), and what only the SQLite file promises (durability, several processes, retention).

Timing: a fetch is looped until the expected messages arrived or a generous deadline passed, so a
loaded machine makes the suite slower, not red.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from events.bus import Consumer, EventBus, Message
from events.errors import NotConnected
from infra.bus.kafka import KafkaBus
from infra.bus.memory import InMemoryBus
from infra.bus.sqlite import SqliteLogBus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 20.0
KAFKA_SESSION_TIMEOUT_MS = 3000  # Tansu holds a JoinGroup for half of it


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def fetch_until(consumer: Consumer, count: int, *, deadline_s: float = DEADLINE_S) -> list[Message]:
    """Fetch until `count` messages arrived or the deadline passed; returns what arrived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    messages: list[Message] = []
    while len(messages) < count and loop.time() < deadline:
        messages += await consumer.fetch(max_records=count - len(messages), timeout_s=0.5)
    return messages


async def publish_values(bus: EventBus, topic: str, *values: bytes, key: bytes | None = None) -> None:
    for value in values:
        await bus.publish(topic, value, key=key)


def values(messages: list[Message]) -> list[bytes]:
    return [m.value for m in messages]


@pytest.fixture(params=["memory", "sqlite", "kafka"])
def make_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], EventBus]:
    """Builds an unconnected bus of one kind; SQLite buses of one test share a file."""
    if request.param == "memory":
        return InMemoryBus
    if request.param == "sqlite":
        return lambda: SqliteLogBus(tmp_path / "bus.sqlite3")
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    return lambda: KafkaBus(bootstrap, client_id=unique("contract"), session_timeout_ms=KAFKA_SESSION_TIMEOUT_MS)


@pytest.fixture
async def bus(make_bus: Callable[[], EventBus]) -> AsyncIterator[EventBus]:
    async with make_bus() as connected:
        yield connected


@pytest.fixture
async def topic(bus: EventBus) -> str:
    name = unique("topic")
    await bus.ensure_topics([name])
    return name


# --- every adapter -------------------------------------------------------------------------------


async def test_a_bus_used_before_connect_raises_not_connected(make_bus):
    bus = make_bus()
    with pytest.raises(NotConnected):
        await bus.ensure_topics([unique("topic")])
    with pytest.raises(NotConnected):
        await bus.publish(unique("topic"), b"x")
    with pytest.raises(NotConnected):
        await bus.subscribe([unique("topic")], group_id=unique("group"))
    assert (await bus.health()).status == "down"


async def test_ensure_topics_is_idempotent_and_keeps_what_was_published(bus):
    name = unique("topic")
    await bus.ensure_topics([name])
    await bus.publish(name, b"kept")
    await bus.ensure_topics([name, name])
    await bus.ensure_topics([name, unique("topic")])

    async with await bus.subscribe([name], group_id=unique("group")) as consumer:
        assert values(await fetch_until(consumer, 1)) == [b"kept"]


async def test_a_new_group_reads_every_message_in_order_with_key_value_and_headers(bus, topic):
    for i in range(5):
        await bus.publish(topic, f"value-{i}".encode(), key=b"same-key", headers=[("n", str(i).encode()), ("x", b"\x00\xff")])

    async with await bus.subscribe([topic], group_id=unique("group"), from_beginning=True) as consumer:
        messages = await fetch_until(consumer, 5)

    assert values(messages) == [f"value-{i}".encode() for i in range(5)]
    assert [m.offset for m in messages] == sorted(m.offset for m in messages)
    for i, message in enumerate(messages):
        assert message.topic == topic
        assert message.key == b"same-key"
        assert message.headers == (("n", str(i).encode()), ("x", b"\x00\xff"))
        assert message.header("n") == str(i).encode()
        assert message.timestamp_ms is not None and message.timestamp_ms > 0


async def test_two_groups_each_get_every_message(bus, topic):
    await publish_values(bus, topic, b"a", b"b", b"c")

    async with (
        await bus.subscribe([topic], group_id=unique("first")) as first,
        await bus.subscribe([topic], group_id=unique("second")) as second,
    ):
        assert values(await fetch_until(first, 3)) == [b"a", b"b", b"c"]
        assert values(await fetch_until(second, 3)) == [b"a", b"b", b"c"]


async def test_a_new_consumer_of_the_group_resumes_after_the_committed_message(bus, topic):
    group = unique("group")
    await publish_values(bus, topic, b"m0", b"m1", b"m2", b"m3")

    # GIVEN a consumer that processed m0 and m1, committed m1 and left
    async with await bus.subscribe([topic], group_id=group) as consumer:
        messages = await fetch_until(consumer, 4)
        assert values(messages) == [b"m0", b"m1", b"m2", b"m3"]
        await consumer.commit(messages[1])

    # WHEN the next consumer of the group joins THEN it starts at m2
    async with await bus.subscribe([topic], group_id=group) as consumer:
        assert values(await fetch_until(consumer, 2)) == [b"m2", b"m3"]


async def test_messages_fetched_but_not_committed_are_delivered_again_after_close(bus, topic):
    group = unique("group")
    await publish_values(bus, topic, b"m0", b"m1")

    async with await bus.subscribe([topic], group_id=group) as consumer:
        assert values(await fetch_until(consumer, 2)) == [b"m0", b"m1"]
        # no commit: the consumer "crashed" before its handler finished

    async with await bus.subscribe([topic], group_id=group) as consumer:
        assert values(await fetch_until(consumer, 2)) == [b"m0", b"m1"]


async def test_a_new_group_not_from_beginning_starts_at_the_end(bus, topic):
    await publish_values(bus, topic, b"old-1", b"old-2")

    async with await bus.subscribe([topic], group_id=unique("group"), from_beginning=False) as consumer:
        await bus.publish(topic, b"new")
        assert values(await fetch_until(consumer, 1)) == [b"new"]


async def test_fetch_returns_nothing_after_its_timeout_when_nothing_arrives(bus, topic):
    async with await bus.subscribe([topic], group_id=unique("group")) as consumer:
        started = time.monotonic()
        assert await consumer.fetch(timeout_s=0.3) == []
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 10


async def test_a_waiting_fetch_returns_as_soon_as_a_message_arrives(bus, topic):
    async with await bus.subscribe([topic], group_id=unique("group")) as consumer:
        assert await consumer.fetch(timeout_s=0.2) == []  # the group is settled
        waiting = asyncio.create_task(consumer.fetch(timeout_s=15))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await bus.publish(topic, b"wake up")
        messages = await waiting
        assert values(messages) == [b"wake up"]
        assert time.monotonic() - started < 5


async def test_health_is_ok_when_connected_and_down_after_close(make_bus):
    bus = make_bus()
    async with bus:
        health = await bus.health()
        assert health.status == "ok"
        assert health.adapter == bus.adapter_name
    assert (await bus.health()).status == "down"


async def test_a_consumer_is_unusable_once_closed(bus, topic):
    consumer = await bus.subscribe([topic], group_id=unique("group"))
    await consumer.close()
    await consumer.close()  # closing twice is harmless
    with pytest.raises(NotConnected):
        await consumer.fetch(timeout_s=0.1)


# --- the log buses (memory and SQLite): a group's members share its partitions ------------------------


@pytest.fixture(params=["memory", "sqlite"])
def make_log_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., EventBus]:
    if request.param == "memory":
        return InMemoryBus
    return lambda **options: SqliteLogBus(tmp_path / "bus.sqlite3", **options)


async def test_members_of_a_group_share_its_partitions_and_a_leaving_member_hands_its_over(make_log_bus):
    async with make_log_bus(partitions=2) as bus:
        topic, group = unique("topic"), unique("group")
        await bus.ensure_topics([topic])
        first = await bus.subscribe([topic], group_id=group)
        second = await bus.subscribe([topic], group_id=group)
        await publish_values(bus, topic, *(f"m{i}".encode() for i in range(6)))  # keyless: round robin

        # GIVEN each member owns one partition
        from_first, from_second = await fetch_until(first, 3), await fetch_until(second, 3)
        assert {m.partition for m in from_first} != {m.partition for m in from_second}
        assert sorted(values(from_first + from_second)) == [f"m{i}".encode() for i in range(6)]
        await first.commit(from_first[-1])

        # WHEN the second leaves without committing THEN the first gets its messages again
        await second.close()
        assert sorted(values(await fetch_until(first, 3))) == sorted(values(from_second))
        await first.close()


async def test_messages_with_one_key_stay_on_one_partition_in_order(make_log_bus):
    async with make_log_bus(partitions=4) as bus:
        topic = unique("topic")
        await bus.ensure_topics([topic])
        for i in range(12):
            await bus.publish(topic, f"{i % 3}:{i}".encode(), key=f"key-{i % 3}".encode())
        async with await bus.subscribe([topic], group_id=unique("group")) as consumer:
            messages = await fetch_until(consumer, 12)
    for key in (b"key-0", b"key-1", b"key-2"):
        same_key = [m for m in messages if m.key == key]
        assert len({m.partition for m in same_key}) == 1
        assert [int(m.value.split(b":")[1]) for m in same_key] == sorted(int(m.value.split(b":")[1]) for m in same_key)


# --- the SQLite file: durable, shared by processes, pruned -------------------------------------------


async def test_messages_and_committed_offsets_survive_reopening_the_file(tmp_path):
    path, topic, group = tmp_path / "bus.sqlite3", unique("topic"), unique("group")
    async with SqliteLogBus(path) as bus:
        await bus.ensure_topics([topic])
        await publish_values(bus, topic, b"m0", b"m1", b"m2")
        async with await bus.subscribe([topic], group_id=group) as consumer:
            await consumer.commit((await fetch_until(consumer, 1))[0])

    async with SqliteLogBus(path) as reopened:
        async with await reopened.subscribe([topic], group_id=group) as consumer:
            assert values(await fetch_until(consumer, 2)) == [b"m1", b"m2"]
        async with await reopened.subscribe([topic], group_id=unique("group")) as consumer:
            assert values(await fetch_until(consumer, 3)) == [b"m0", b"m1", b"m2"]


async def test_two_buses_on_one_file_see_each_others_publishes_and_share_a_group(tmp_path):
    path, topic, group = tmp_path / "bus.sqlite3", unique("topic"), unique("group")
    async with SqliteLogBus(path) as one, SqliteLogBus(path) as other:
        await one.ensure_topics([topic])
        await other.ensure_topics([topic])
        async with await other.subscribe([topic], group_id=group) as consumer:
            waiting = asyncio.create_task(consumer.fetch(timeout_s=15))
            await asyncio.sleep(0.1)
            await one.publish(topic, b"from one")
            assert values(await waiting) == [b"from one"]
            await consumer.commit((await waiting)[0])
        await other.publish(topic, b"from other")

        async with await one.subscribe([topic], group_id=group) as consumer:
            assert values(await fetch_until(consumer, 1)) == [b"from other"]


async def test_a_member_whose_process_died_hands_its_partitions_over_at_once(tmp_path):
    path, topic, group = tmp_path / "bus.sqlite3", unique("topic"), unique("group")
    async with SqliteLogBus(path) as bus:
        await bus.ensure_topics([topic])
        await publish_values(bus, topic, b"m0", b"m1")

        # GIVEN a member in another process that fetched and died without leaving (lease: 60 s)
        script = (
            "import asyncio, os, sys\n"
            "from infra.bus.sqlite import SqliteLogBus\n"
            "async def main():\n"
            f"    bus = SqliteLogBus({str(path)!r}, session_timeout_s=60)\n"
            "    await bus.connect()\n"
            f"    consumer = await bus.subscribe([{topic!r}], group_id={group!r})\n"
            "    print(len(await consumer.fetch(timeout_s=10)), flush=True)\n"
            "    os._exit(0)\n"
            "asyncio.run(main())\n"
        )
        died = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert died.stdout.strip() == "2", died.stderr

        # WHEN a new member joins THEN it gets the uncommitted messages without waiting out the lease
        async with await bus.subscribe([topic], group_id=group) as consumer:
            assert values(await fetch_until(consumer, 2, deadline_s=5)) == [b"m0", b"m1"]


async def test_prune_deletes_old_messages_every_group_has_committed_past(tmp_path):
    topic, unread = unique("topic"), unique("unread")
    async with SqliteLogBus(tmp_path / "bus.sqlite3") as bus:
        await bus.ensure_topics([topic, unread])
        await publish_values(bus, topic, b"m0", b"m1", b"m2")
        await bus.publish(unread, b"nobody reads this")
        for group, done in ((unique("ahead"), 2), (unique("behind"), 1)):
            async with await bus.subscribe([topic], group_id=group) as consumer:
                await consumer.commit((await fetch_until(consumer, done))[-1])
        await asyncio.sleep(0.05)

        assert await bus.prune(older_than_s=3600) == 0  # nothing is that old
        assert await bus.prune(older_than_s=0) == 1  # m0: the group behind committed only m0

        async with await bus.subscribe([topic, unread], group_id=unique("late")) as consumer:
            remaining = await fetch_until(consumer, 3)
        assert sorted(values(remaining)) == [b"m1", b"m2", b"nobody reads this"]


# --- retention (memory and SQLite): only consumed messages go, offsets stay ---------------------------


async def test_retention_prunes_only_consumed_messages_that_are_old_or_over_the_cap(make_log_bus):
    async with make_log_bus() as bus:
        topic, unread, ahead, behind = unique("topic"), unique("unread"), unique("ahead"), unique("behind")
        await bus.ensure_topics([topic, unread])
        await publish_values(bus, topic, *(f"m{i}".encode() for i in range(10)))
        await bus.publish(unread, b"nobody reads this")  # like dead letters before their recorder exists
        # GIVEN one group consumed m0..m7 and another only m0..m5
        for group, done in ((ahead, 8), (behind, 6)):
            async with await bus.subscribe([topic], group_id=group) as consumer:
                await consumer.commit((await fetch_until(consumer, done))[-1])

        # WHEN nothing is old and nothing is over the cap THEN nothing goes
        assert await bus.prune(older_than_s=3600) == 0
        assert await bus.prune(older_than_s=3600, max_messages=10) == 0
        # WHEN the cap is 5 THEN the five oldest go (all consumed by both groups)
        assert await bus.prune(older_than_s=3600, max_messages=5) == 5
        await asyncio.sleep(0.05)
        # WHEN everything is old THEN what both groups consumed goes, nothing they have not
        assert await bus.prune(older_than_s=0, max_messages=0) == 1
        assert await bus.prune(older_than_s=0, max_messages=0) == 0

        # THEN offsets did not change: each group resumes where it was
        async with await bus.subscribe([topic], group_id=behind) as consumer:
            resumed = await fetch_until(consumer, 4)
        assert [(m.offset, m.value) for m in resumed] == [(i, f"m{i}".encode()) for i in range(6, 10)]
        async with await bus.subscribe([topic], group_id=ahead) as consumer:
            assert [m.offset for m in await fetch_until(consumer, 2)] == [8, 9]
        # AND a new group from the beginning starts at the first message left; the unread topic kept all
        async with await bus.subscribe([topic, unread], group_id=unique("late"), from_beginning=True) as consumer:
            remaining = await fetch_until(consumer, 5)
        assert sorted((m.topic == topic, m.offset, m.value) for m in remaining) == [
            (False, 0, b"nobody reads this"), *((True, i, f"m{i}".encode()) for i in range(6, 10))]


async def test_a_group_that_reads_a_pruned_topic_from_the_end_sees_only_new_messages(make_log_bus):
    async with make_log_bus(partitions=2) as bus:
        topic, group = unique("topic"), unique("group")
        await bus.ensure_topics([topic])
        await publish_values(bus, topic, *(f"m{i}".encode() for i in range(6)))
        async with await bus.subscribe([topic], group_id=group) as consumer:
            for message in await fetch_until(consumer, 6):
                await consumer.commit(message)
        await asyncio.sleep(0.05)
        assert await bus.prune(older_than_s=0) == 6
        async with await bus.subscribe([topic], group_id=unique("late"), from_beginning=True) as late:
            assert await late.fetch(timeout_s=0.2) == []
            await bus.publish(topic, b"new")
            [message] = await fetch_until(late, 1)
        assert message.value == b"new" and message.offset == 3  # numbering goes on after the pruned ones


def _file_bytes(path: Path) -> int:
    """The main file's size once its write-ahead log is checkpointed into it."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


async def _fill_and_consume(bus: SqliteLogBus, topic: str, group: str, count: int) -> None:
    blob = b"x" * 4096
    for _ in range(count):
        await bus.publish(topic, blob)
    async with await bus.subscribe([topic], group_id=group) as consumer:
        messages = await fetch_until(consumer, count)
        await consumer.commit(messages[-1])


async def test_a_new_sqlite_file_gives_pruned_space_back(tmp_path):
    path, topic, group = tmp_path / "bus.sqlite3", unique("topic"), unique("group")
    async with SqliteLogBus(path) as bus:
        await _fill_and_consume(bus, topic, group, 1000)
        full = _file_bytes(path)
        await asyncio.sleep(0.05)
        assert await bus.prune(older_than_s=0) == 1000
        assert _file_bytes(path) < full / 4


async def test_an_sqlite_file_made_before_auto_vacuum_reuses_pruned_space(tmp_path):
    import sqlite3

    path, topic, group = tmp_path / "bus.sqlite3", unique("topic"), unique("group")
    with contextlib.closing(sqlite3.connect(path)) as old:  # GIVEN a file made by an earlier version
        old.executescript("PRAGMA journal_mode = WAL; CREATE TABLE topics (topic TEXT PRIMARY KEY, partitions INTEGER NOT NULL);")
        assert old.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    async with SqliteLogBus(path) as bus:
        await _fill_and_consume(bus, topic, group, 500)
        await asyncio.sleep(0.05)
        assert await bus.prune(older_than_s=0) == 500
        high_water = _file_bytes(path)
        for _ in range(3):  # WHEN as much again is published, consumed and pruned, several times
            await _fill_and_consume(bus, topic, group, 500)
            await asyncio.sleep(0.05)
            assert await bus.prune(older_than_s=0) == 500
        # THEN the file stays at its high-water mark instead of growing
        assert _file_bytes(path) <= high_water * 1.1
