"""The function runner over the in-memory bus: commit after success, retries, dead letters,
idempotency. The same runner runs over Kafka in tests/e2e."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from events import ObjectCreated, PermanentError, Topics, TransientError, decode, encode, make
from events.payloads import IngestStarted
from functions.runtime.idempotency import IdempotencyStore
from functions.runtime.runner import Function, RetryPolicy, Runner, publish
from infra.bus.memory import InMemoryBus
from infra.catalog.sqlite import SqliteCatalog

pytestmark = pytest.mark.unit
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture
async def bus():
    async with InMemoryBus() as bus:
        yield bus


@pytest.fixture
async def catalog(tmp_path):
    async with SqliteCatalog(tmp_path / "catalog.sqlite3") as catalog:
        yield catalog


@pytest.fixture
def topics():
    return Topics(f"t{uuid.uuid4().hex[:8]}")


def created(key: str = "a.txt") -> object:
    return make(ObjectCreated(bucket="docs", key=key, size=3, source="drop"), namespace="acme")


async def read_all(bus, topic: str, want: int, timeout: float = 5.0) -> list:
    consumer = await bus.subscribe([topic], group_id=f"reader-{uuid.uuid4().hex}")
    got: list = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while len(got) < want and asyncio.get_running_loop().time() < deadline:
            got += await consumer.fetch(timeout_s=0.1)
    finally:
        await consumer.close()
    return got


class Recorder:
    """A handler that records what it saw and answers with IngestStarted."""

    def __init__(self, fail_times: int = 0, error: type[Exception] = TransientError) -> None:
        self.seen: list[str] = []
        self.fail_times = fail_times
        self.error = error

    async def __call__(self, event, *, catalog=None):
        self.seen.append(event.event_id)
        if len(self.seen) <= self.fail_times:
            raise self.error("not yet")
        return [event.child(IngestStarted(task_id=event.payload.key, collection_id="c", objects=1))]


async def run_until(runner: Runner, outcomes: list, n: int, timeout: float = 5.0) -> None:
    await runner.start()
    deadline = asyncio.get_running_loop().time() + timeout
    while len(outcomes) < n and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await runner.stop()
    assert len(outcomes) >= n, f"only {outcomes} processed"


def make_runner(bus, topics, handler, catalog=None, *, once=False, outcomes=None) -> Runner:
    fn = Function("recorder", handler, frozenset({"ObjectCreated"}), once=once)
    return Runner(
        bus=bus, topics=topics, functions=[fn], deps={"catalog": catalog}, retry=FAST, fetch_timeout_s=0.05,
        idempotency=IdempotencyStore(catalog) if catalog is not None else None,
        on_processed=(lambda f, m, o: outcomes.append(o)) if outcomes is not None else None,
    )


async def test_handler_result_is_published_on_its_topic_and_the_message_committed(bus, topics):
    handler, outcomes = Recorder(), []
    runner = make_runner(bus, topics, handler, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    event = created()
    await publish(bus, topics, event)
    await run_until(runner, outcomes, 1)

    [message] = await read_all(bus, topics.ingest, 1)
    result = decode(message.value)
    assert result.type == "IngestStarted" and result.causation_id == event.event_id
    assert result.correlation_id == event.correlation_id
    # committed: a second runner in the same group sees nothing new
    outcomes2 = []
    again = make_runner(bus, topics, Recorder(), outcomes=outcomes2)
    await again.start()
    await asyncio.sleep(0.15)
    await again.stop()
    assert outcomes2 == []


async def test_poison_goes_to_dead_letters_with_original_bytes_and_the_next_message_is_handled(bus, topics):
    handler, outcomes = Recorder(), []
    runner = make_runner(bus, topics, handler, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    poison = b'{"payload": {"type": "ObjectCreated", "bucket": "b"}}'
    await bus.publish(topics.objects, poison)
    good = created()
    await publish(bus, topics, good)
    await run_until(runner, outcomes, 2)

    assert outcomes == ["dead_lettered", "ok"]
    assert handler.seen == [good.event_id]
    [dead] = await read_all(bus, topics.dead_letters, 1)
    assert dead.value == poison
    assert dead.header("x-sluice-error-type") == b"poison_message"
    assert b"key" in dead.header("x-sluice-error")  # names the missing field
    assert dead.header("x-sluice-function") == b"recorder"


async def test_permanent_error_is_dead_lettered_at_once(bus, topics):
    handler, outcomes = Recorder(fail_times=99, error=PermanentError), []
    runner = make_runner(bus, topics, handler, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    await publish(bus, topics, created())
    await run_until(runner, outcomes, 1)
    assert outcomes == ["dead_lettered"] and len(handler.seen) == 1
    [dead] = await read_all(bus, topics.dead_letters, 1)
    assert dead.header("x-sluice-attempts") == b"1"


async def test_transient_errors_are_retried_until_the_handler_succeeds(bus, topics):
    handler, outcomes = Recorder(fail_times=2), []
    runner = make_runner(bus, topics, handler, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    await publish(bus, topics, created())
    await run_until(runner, outcomes, 1)
    assert outcomes == ["ok"] and len(handler.seen) == 3
    assert await read_all(bus, topics.dead_letters, 1, timeout=0.3) == []


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_max_attempts(bus, topics):
    handler, outcomes = Recorder(fail_times=99, error=RuntimeError), []
    runner = make_runner(bus, topics, handler, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    await publish(bus, topics, created())
    await run_until(runner, outcomes, 1)
    assert outcomes == ["dead_lettered"] and len(handler.seen) == FAST.max_attempts
    [dead] = await read_all(bus, topics.dead_letters, 1)
    assert dead.header("x-sluice-error-type") == b"RuntimeError"


async def test_events_of_other_types_on_the_topic_are_skipped_and_committed(bus, topics):
    handler, outcomes = Recorder(), []
    fn = Function("recorder", handler, frozenset({"ObjectCreated"}))
    runner = Runner(bus=bus, topics=topics, functions=[fn], deps={}, retry=FAST, fetch_timeout_s=0.05,
                    on_processed=lambda f, m, o: outcomes.append(o), group_prefix="g")
    await bus.ensure_topics(topics.all())
    # IngestStarted lives on another topic; publish a foreign-but-valid type onto objects directly
    stray = make(IngestStarted(task_id="t", collection_id="c", objects=0))
    await bus.publish(topics.objects, encode(stray))
    await run_until(runner, outcomes, 1)
    assert outcomes == ["skipped"] and handler.seen == []


async def test_once_functions_run_a_redelivered_event_once_and_republish_the_same_result(bus, topics, catalog):
    handler, outcomes = Recorder(), []
    runner = make_runner(bus, topics, handler, catalog, once=True, outcomes=outcomes)
    await bus.ensure_topics(topics.all())
    event = created()
    await publish(bus, topics, event)
    await publish(bus, topics, event)  # the broker redelivers the same bytes
    await run_until(runner, outcomes, 2)

    assert handler.seen == [event.event_id]
    results = await read_all(bus, topics.ingest, 2)
    ids = {decode(m.value).event_id for m in results}
    assert len(results) == 2 and len(ids) == 1  # same event id: downstream can de-duplicate
    record = await catalog.get("idempotency", f"recorder:{event.event_id}")
    assert record["status"] == "COMPLETED"


async def test_result_event_ids_are_deterministic_across_reruns(bus, topics):
    outcomes = []
    event = created()
    for _ in range(2):
        runner = make_runner(bus, topics, Recorder(), outcomes=outcomes)
        runner.group_prefix = f"g{uuid.uuid4().hex}"  # a fresh group re-runs the handler
        await bus.ensure_topics(topics.all())
        if not outcomes:
            await publish(bus, topics, event)
        await run_until(runner, outcomes, len(outcomes) + 1)
    results = await read_all(bus, topics.ingest, 2)
    assert len({decode(m.value).event_id for m in results}) == 1


async def test_stopping_during_a_retry_leaves_the_message_for_the_next_runner(bus, topics):
    slow = RetryPolicy(max_attempts=5, base_delay_s=5, max_delay_s=5)
    handler = Recorder(fail_times=1)
    fn = Function("recorder", handler, frozenset({"ObjectCreated"}))
    runner = Runner(bus=bus, topics=topics, functions=[fn], deps={}, retry=slow, fetch_timeout_s=0.05)
    await bus.ensure_topics(topics.all())
    await publish(bus, topics, created())
    await runner.start()
    while not handler.seen:
        await asyncio.sleep(0.01)
    await runner.stop()  # mid-backoff
    assert await read_all(bus, topics.ingest, 1, timeout=0.2) == []

    outcomes = []
    second = make_runner(bus, topics, handler, outcomes=outcomes)
    await run_until(second, outcomes, 1)
    assert outcomes == ["ok"] and len(handler.seen) == 2


def test_a_handler_needing_a_port_bootstrap_does_not_provide_fails_at_start(topics):
    async def handle(event, *, vectors): ...

    with pytest.raises(TypeError, match="vectors"):
        Runner(bus=InMemoryBus(), topics=topics, functions=[Function("f", handle, frozenset({"ObjectCreated"}))], deps={})


def test_once_functions_need_an_idempotency_store(topics):
    async def handle(event): ...

    with pytest.raises(ValueError, match="IdempotencyStore"):
        Runner(bus=InMemoryBus(), topics=topics, functions=[Function("f", handle, frozenset({"ObjectCreated"}), once=True)], deps={})
