"""Supervised functions: a consumer loop that fails is subscribed again with backoff, its state and
restarts are visible (in memory, in the catalog, in the metrics), stop ends it; a full function
keeps polling with its consumer paused."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from events import ObjectCreated, Topics, make
from events.bus import Consumer, Message
from events.payloads import IngestStarted
from functions.records.function_states import FUNCTION_STATES, FunctionStates, FunctionStatus
from functions.runtime.runner import Function, RetryPolicy, Runner, publish
from functions.runtime.supervision import RestartPolicy
from infra.bus.memory import InMemoryBus
from infra.catalog.memory import MemoryCatalog

pytestmark = pytest.mark.unit
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture
async def bus():
    async with InMemoryBus() as bus:
        yield bus


@pytest.fixture
def kinds() -> dict:
    """The memory catalog's tables, to look at them synchronously."""
    return {}


@pytest.fixture
async def catalog(kinds):
    async with MemoryCatalog(kinds) as catalog:
        yield catalog


@pytest.fixture
def topics():
    return Topics(f"t{uuid.uuid4().hex[:8]}")


def created(key: str = "a.txt"):
    return make(ObjectCreated(bucket="docs", key=key, size=3, source="drop"), namespace="acme")


async def answer(event):
    return [event.child(IngestStarted(task_id=event.payload.key, collection_id="c", objects=1))]


class _Wrapped(Consumer):
    """A real consumer whose calls a test can break or watch."""

    def __init__(self, inner: Consumer, bus: FlakyBus) -> None:
        self.inner, self.bus = inner, bus

    async def fetch(self, *, max_records: int = 100, timeout_s: float = 1.0) -> list[Message]:
        self.bus.calls.append(("fetch", max_records))
        if self.bus.fetch_failures > 0:
            self.bus.fetch_failures -= 1
            raise RuntimeError("the fetch broke (not transient)")
        return await self.inner.fetch(max_records=max_records, timeout_s=timeout_s)

    async def commit(self, message: Message) -> None:
        await self.inner.commit(message)

    async def close(self) -> None:
        await self.inner.close()

    async def pause(self) -> None:
        self.bus.calls.append(("pause", 0))
        await self.inner.pause()

    async def resume(self) -> None:
        self.bus.calls.append(("resume", 0))
        await self.inner.resume()


class FlakyBus(InMemoryBus):
    """The in-memory bus; the first `subscribe_failures` subscribes raise, and the first
    `fetch_failures` fetches (across consumers) raise a non-transient error."""

    def __init__(self, *, subscribe_failures: int = 0, fetch_failures: int = 0) -> None:
        super().__init__()
        self.subscribe_failures, self.fetch_failures = subscribe_failures, fetch_failures
        self.subscribed_at: list[float] = []
        self.calls: list[tuple[str, int]] = []

    async def subscribe(self, topics, *, group_id, from_beginning=True):
        self.subscribed_at.append(time.monotonic())
        if self.subscribe_failures > 0:
            self.subscribe_failures -= 1
            raise RuntimeError("the broker refused the group")
        return _Wrapped(await super().subscribe(topics, group_id=group_id, from_beginning=from_beginning), self)


def runner_on(bus, topics, *, catalog=None, outcomes=None, restart=RestartPolicy(base_delay_s=0.04, max_delay_s=1.0),
              handler=answer, concurrency=None) -> Runner:
    fn = Function("answer", handler, frozenset({"ObjectCreated"}))
    return Runner(bus=bus, topics=topics, functions=[fn], deps={"catalog": catalog}, retry=FAST, fetch_timeout_s=0.02,
                  restart=restart, heartbeat_s=0.05, concurrency=concurrency,
                  on_processed=(lambda f, m, o: outcomes.append(o)) if outcomes is not None else None)


async def eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_loop_that_keeps_failing_is_restarted_with_growing_backoff_and_then_handles_messages(topics, catalog, kinds):
    async with FlakyBus(fetch_failures=3) as bus:
        outcomes: list[str] = []
        runner = runner_on(bus, topics, catalog=catalog, outcomes=outcomes)
        await bus.ensure_topics(topics.all())
        await publish(bus, topics, created())
        restarts_before = sample("sluice_function_restarts_total", function="answer")
        await runner.start()
        try:
            await eventually(lambda: outcomes == ["ok"])
            state = runner.states()["answer"]
            assert state["state"] == "running" and state["restarts"] == 3
            assert state["last_error"] == "RuntimeError: the fetch broke (not transient)" and state["last_error_at"]
            gaps = [b - a for a, b in zip(bus.subscribed_at, bus.subscribed_at[1:], strict=False)]
            # backoffs of 0.02-0.04 s, then 0.04-0.08 s, then 0.08-0.16 s: each gap is at least its backoff (a busy
            # machine only adds to a gap, so lower bounds are what can be asserted)
            assert len(gaps) == 3 and gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08, gaps
            assert sample("sluice_function_restarts_total", function="answer") == restarts_before + 3
            assert sample("sluice_function_up", function="answer") == 1
            await eventually(lambda: any(r["state"] == "running" for r in kinds.get(FUNCTION_STATES, {}).values()))
        finally:
            await runner.stop()
    assert runner.states()["answer"]["state"] == "stopped"
    assert sample("sluice_function_up", function="answer") == 0
    [record] = await catalog.find(FUNCTION_STATES)
    assert record["state"] == "stopped" and record["restarts"] == 3 and record["function"] == "answer"
    assert record["id"].endswith("/answer") and record["updated_at"] > 0


async def test_a_function_that_cannot_subscribe_shows_restarting_and_stop_ends_it_at_once(topics, catalog, kinds):
    async with FlakyBus(subscribe_failures=1_000) as bus:
        runner = runner_on(bus, topics, catalog=catalog, restart=RestartPolicy(base_delay_s=0.01, max_delay_s=30.0))
        await runner.start()  # returns after the first attempt, failed or not
        await eventually(lambda: runner.states()["answer"]["restarts"] >= 2)
        state = runner.states()["answer"]
        assert state["state"] in ("restarting", "starting") and "refused the group" in state["last_error"]
        await eventually(lambda: any(r["state"] == "restarting" for r in kinds.get(FUNCTION_STATES, {}).values()))
        summary = await FunctionStates(catalog).summary()
        assert summary["answer"]["state"] == "restarting" and FunctionStates.degraded(summary) == ["answer"]
        began = time.monotonic()
        await runner.stop()
        assert time.monotonic() - began < 2.0  # stop does not wait out the backoff
    assert runner.states()["answer"]["state"] == "stopped"
    assert FunctionStates.degraded(await FunctionStates(catalog).summary()) == []


def test_restart_delays_double_with_jitter_and_are_capped():
    policy = RestartPolicy(base_delay_s=1.0, max_delay_s=8.0)
    for failures, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (500, 8.0)]:
        delays = [policy.delay(failures) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays), (failures, delays)


async def test_stale_records_and_restarting_ones_degrade_health_but_stopped_ones_do_not(catalog):
    states, now = FunctionStates(catalog), time.time()
    await states.put("host:1:aa", "scan", {"state": "running", "restarts": 0, "updated_at": now, "heartbeat_s": 10})
    await states.put("host:2:bb", "scan", {"state": "running", "restarts": 1, "updated_at": now - 600, "heartbeat_s": 10,
                                           "last_error": "old", "last_error_at": now - 700})
    await states.put("host:2:bb", "register", {"state": "running", "updated_at": now - 31, "heartbeat_s": 10})
    await states.put("host:1:aa", "deploy", {"state": "restarting", "restarts": 4, "updated_at": now, "heartbeat_s": 10,
                                             "last_error": "KafkaError: boom", "last_error_at": now - 1})
    await states.put("host:1:aa", "ingest", {"state": "stopped", "updated_at": now - 600, "heartbeat_s": 10})
    summary = await states.summary(now)
    assert summary["scan"]["state"] == "running" and not summary["scan"]["stale"] and summary["scan"]["runners"] == 1
    assert summary["register"]["stale"] and summary["register"]["runners"] == 0
    assert summary["deploy"]["state"] == "restarting" and summary["deploy"]["last_error"] == "KafkaError: boom"
    assert summary["ingest"]["state"] == "stopped" and not summary["ingest"]["stale"]
    assert sorted(FunctionStates.degraded(summary)) == ["deploy", "register"]
    assert await states.forget_old(now + 2 * 24 * 3600) == 5


async def test_a_full_function_keeps_polling_with_its_consumer_paused_and_resumes_when_there_is_room(topics):
    release = asyncio.Event()

    async def slow(event):
        await release.wait()
        return []

    async with FlakyBus() as bus:
        outcomes: list[str] = []
        runner = runner_on(bus, topics, outcomes=outcomes, handler=slow, concurrency=1)
        await bus.ensure_topics(topics.all())
        await publish(bus, topics, created("first.txt"), created("second.txt"))
        await runner.start()
        try:
            await eventually(lambda: ("pause", 0) in bus.calls)
            polls_while_paused = len(bus.calls)
            await asyncio.sleep(0.2)
            paused_polls = [c for c in bus.calls[polls_while_paused:] if c[0] == "fetch"]
            assert len(paused_polls) >= 3 and all(n == 1 for _, n in paused_polls)  # still polling, nothing handed out
            assert outcomes == []
            release.set()
            await eventually(lambda: outcomes == ["ok", "ok"])
            assert ("resume", 0) in bus.calls
        finally:
            release.set()
            await runner.stop()


async def test_outcomes_and_dead_letters_are_counted_per_function(bus, topics):
    outcomes: list[str] = []
    runner = runner_on(bus, topics, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    ok_before = sample("sluice_events_consumed_total", function="answer", outcome="ok")
    dead_before = sample("sluice_events_consumed_total", function="answer", outcome="dead_lettered")
    letters_before = sample("sluice_dead_letters_total", function="answer")
    await bus.publish(topics.objects, b"not an event")
    await publish(bus, topics, created())
    await runner.start()
    try:
        await eventually(lambda: len(outcomes) == 2)
    finally:
        await runner.stop()
    assert sample("sluice_events_consumed_total", function="answer", outcome="ok") == ok_before + 1
    assert sample("sluice_events_consumed_total", function="answer", outcome="dead_lettered") == dead_before + 1
    assert sample("sluice_dead_letters_total", function="answer") == letters_before + 1


def test_function_names_must_be_unique(topics):
    fn = Function("answer", answer, frozenset({"ObjectCreated"}))
    with pytest.raises(ValueError, match="unique"):
        Runner(bus=InMemoryBus(), topics=topics, functions=[fn, fn], deps={})
    assert FunctionStatus.RESTARTING == "restarting"
