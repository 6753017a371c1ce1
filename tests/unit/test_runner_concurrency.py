"""The runner handles several messages of one function at once (in-memory bus): a slow message
does not hold up the others, offsets are committed only up to the lowest unfinished message, a
failure dead-letters only its own message, and stopping leaves unfinished work for redelivery."""

from __future__ import annotations

import asyncio
import time

import pytest

from events import ObjectCreated, PermanentError, decode, make
from events.bus import Message
from events.payloads import IngestStarted
from functions.runtime.runner import Function, RetryPolicy, Runner, _Offsets, publish
from infra.bus.memory import InMemoryBus
from infra.settings import Settings
from tests.unit.test_runner import bus, topics  # noqa: F401 - the same fixtures

pytestmark = pytest.mark.unit
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)




class Gated:
    """A handler that answers at once, except for keys that wait for their gate to open."""

    def __init__(self, *slow: str, fail: str | None = None) -> None:
        self.gates = {key: asyncio.Event() for key in slow}
        self.fail = fail
        self.started: list[str] = []
        self.finished: list[str] = []
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, event):
        key = event.payload.key
        self.started.append(key)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if key in self.gates:
                await self.gates[key].wait()
            else:
                await asyncio.sleep(0.01)
            if key == self.fail:
                raise PermanentError(f"{key} cannot be handled")
        finally:
            self.running -= 1
        self.finished.append(key)
        return [event.child(IngestStarted(task_id=key, collection_id="c", objects=1))]


def runner_for(bus, topics, handler, outcomes: list, **options) -> Runner:
    fn = Function("gated", handler, frozenset({"ObjectCreated"}))
    return Runner(bus=bus, topics=topics, functions=[fn], deps={}, retry=FAST, fetch_timeout_s=0.05,
                  on_processed=lambda f, m, o: outcomes.append((m.offset, o)), **options)


async def queue(bus, topics, keys: list[str], *, namespace: str = "acme") -> None:
    await bus.ensure_topics(topics.all())
    for key in keys:
        await publish(bus, topics, make(ObjectCreated(bucket="docs", key=key, size=1, source="drop"), namespace=namespace))


async def committed(bus, runner: Runner, topics, partition: int = 0) -> int | None:
    return await bus._storage.committed(runner.group_id(runner.functions[0]), topics.objects, partition)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_slow_message_does_not_delay_the_others_of_the_same_function(bus, topics):
    handler, outcomes = Gated("slow"), []
    await queue(bus, topics, ["slow", "a", "b", "c", "d"])
    runner = runner_for(bus, topics, handler, outcomes, concurrency=8)
    await runner.start()
    try:
        await until(lambda: len(outcomes) == 4)
        assert handler.finished == ["a", "b", "c", "d"] and "slow" in handler.started
        assert [o for _, o in outcomes] == ["ok"] * 4
        handler.gates["slow"].set()
        await until(lambda: len(outcomes) == 5)
    finally:
        await runner.stop()
    assert sorted(decode(m.value).payload.task_id for m in bus.published(topics.ingest)) == ["a", "b", "c", "d", "slow"]


async def test_commit_never_passes_a_message_that_is_not_done(bus, topics):
    handler, outcomes = Gated("slow"), []
    await queue(bus, topics, ["first", "slow", "x", "y", "z"])  # offsets 0..4, the slow one at 1
    runner = runner_for(bus, topics, handler, outcomes, concurrency=8)
    await runner.start()
    try:
        await until(lambda: len(outcomes) == 4)
        await asyncio.sleep(0.2)  # several commit rounds
        assert await committed(bus, runner, topics) == 1  # "first" only: x, y, z wait behind "slow"
        handler.gates["slow"].set()
        await until(lambda: len(outcomes) == 5)
        await asyncio.sleep(0.2)
        assert await committed(bus, runner, topics) == 5
    finally:
        await runner.stop()


async def test_stopping_leaves_an_unfinished_message_and_everything_after_it_for_redelivery(bus, topics):
    handler, outcomes = Gated("slow"), []
    await queue(bus, topics, ["first", "slow", "x", "y"])
    runner = runner_for(bus, topics, handler, outcomes, concurrency=8, drain_timeout_s=0.2)
    await runner.start()
    await until(lambda: len(outcomes) == 3)
    started = time.monotonic()
    await runner.stop()  # "slow" is cancelled after the drain timeout
    assert time.monotonic() - started < 2.0
    assert await committed(bus, runner, topics) == 1

    again, outcomes2 = Gated(), []
    second = runner_for(bus, topics, again, outcomes2)
    await second.start()
    try:
        await until(lambda: len(outcomes2) == 3)
    finally:
        await second.stop()
    assert sorted(again.finished) == ["slow", "x", "y"]  # redelivered from the unfinished one on
    assert await committed(bus, second, topics) == 4


async def test_stop_waits_for_handlers_in_flight_within_the_drain_timeout(bus, topics):
    handler, outcomes = Gated("slow"), []
    await queue(bus, topics, ["slow", "a"])
    runner = runner_for(bus, topics, handler, outcomes, concurrency=8, drain_timeout_s=5.0)
    await runner.start()
    await until(lambda: len(outcomes) == 1)
    stopping = asyncio.create_task(runner.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waits for "slow"
    handler.gates["slow"].set()
    await asyncio.wait_for(stopping, 2.0)
    assert sorted(handler.finished) == ["a", "slow"]
    assert await committed(bus, runner, topics) == 2


async def test_a_failure_dead_letters_only_its_own_message(bus, topics):
    handler, outcomes = Gated("bad", fail="bad"), []
    await queue(bus, topics, ["a", "bad", "b", "c"])
    runner = runner_for(bus, topics, handler, outcomes, concurrency=4)
    await runner.start()
    try:
        await until(lambda: len(outcomes) == 3)
        handler.gates["bad"].set()  # fails after the others finished
        await until(lambda: len(outcomes) == 4)
        await asyncio.sleep(0.2)
    finally:
        await runner.stop()
    assert sorted(outcomes) == [(0, "ok"), (1, "dead_lettered"), (2, "ok"), (3, "ok")]
    [dead] = bus.published(topics.dead_letters)
    assert dead.header("x-sluice-source-offset") == b"1" and b"bad cannot be handled" in dead.header("x-sluice-error")
    assert sorted(decode(m.value).payload.task_id for m in bus.published(topics.ingest)) == ["a", "b", "c"]
    assert await committed(bus, runner, topics) == 4


async def test_at_most_function_concurrency_messages_run_at_once(bus, topics):
    handler, outcomes = Gated(), []
    await queue(bus, topics, [f"k{i}" for i in range(20)])
    fn = Function("gated", handler, frozenset({"ObjectCreated"}))
    runner = Runner(bus=bus, topics=topics, functions=[fn], deps={"settings": Settings(function_concurrency=3)},
                    retry=FAST, fetch_timeout_s=0.05, on_processed=lambda f, m, o: outcomes.append(o))
    assert runner.concurrency == 3
    await runner.start()
    try:
        await until(lambda: len(outcomes) == 20)
    finally:
        await runner.stop()
    assert handler.most_at_once == 3


async def test_a_function_s_own_concurrency_overrides_the_runner_s(bus, topics):
    handler, outcomes = Gated(), []
    await queue(bus, topics, [f"k{i}" for i in range(6)])
    fn = Function("gated", handler, frozenset({"ObjectCreated"}), concurrency=1)
    runner = Runner(bus=bus, topics=topics, functions=[fn], deps={}, concurrency=8, retry=FAST, fetch_timeout_s=0.05,
                    on_processed=lambda f, m, o: outcomes.append(o))
    await runner.start()
    try:
        await until(lambda: len(outcomes) == 6)
    finally:
        await runner.stop()
    assert handler.most_at_once == 1 and handler.finished == [f"k{i}" for i in range(6)]


async def test_one_partition_s_slow_message_does_not_hold_back_another_partition_s_commits(topics):
    async with InMemoryBus(partitions=2) as bus:
        handler, outcomes = Gated("slow"), []
        await bus.ensure_topics(topics.all())
        await publish(bus, topics, make(ObjectCreated(bucket="d", key="slow", size=1, source="drop"), namespace="acme"))
        slow_partition = bus.published(topics.objects)[0].partition
        other = next(ns for ns in (f"ns{i}" for i in range(100)) if _partition_of(ns, 2) != slow_partition)
        for key in ("p", "q"):
            await publish(bus, topics, make(ObjectCreated(bucket="d", key=key, size=1, source="drop"), namespace=other))
        runner = runner_for(bus, topics, handler, outcomes, concurrency=8)
        await runner.start()
        try:
            await until(lambda: len(outcomes) == 2)
            await asyncio.sleep(0.2)
            assert await committed(bus, runner, topics, 1 - slow_partition) == 2
            assert await committed(bus, runner, topics, slow_partition) == 0
            handler.gates["slow"].set()
            await until(lambda: len(outcomes) == 3)
        finally:
            await runner.stop()


def _partition_of(key: str, partitions: int) -> int:
    from infra.bus._log import partition_for

    return partition_for(key.encode(), partitions)


def _message(offset: int, partition: int = 0) -> Message:
    return Message(topic="t", partition=partition, offset=offset, value=b"")


def test_offsets_commit_the_highest_done_message_below_every_unfinished_one():
    offsets = _Offsets()
    for o in range(5):
        offsets.start(_message(o))
    offsets.done(_message(3))
    offsets.done(_message(4))
    assert offsets.committable() == [] and offsets.waiting == 2
    offsets.done(_message(0))
    assert [m.offset for m in offsets.committable()] == [0]
    offsets.done(_message(2))
    assert offsets.committable() == []  # 1 is still running
    offsets.done(_message(1))
    assert [m.offset for m in offsets.committable()] == [4] and offsets.waiting == 0
    assert offsets.committable() == []


def test_offsets_never_commit_backwards_after_a_redelivery():
    offsets = _Offsets()
    offsets.start(_message(7))
    offsets.done(_message(7))
    assert [m.offset for m in offsets.committable()] == [7]
    offsets.start(_message(5))  # the partition came back and was read again from an older commit
    offsets.done(_message(5))
    assert offsets.committable() == []
