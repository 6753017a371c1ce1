"""Dead letters you can see and replay, on the memory bus and catalog: one bad record of a
notification is dead-lettered alone while the good ones are handled; the `dead_letters` function
records each dead letter once; replay publishes the original bytes to their source topic; discard
closes one for good; the recorder never writes into the topic it reads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from events import Conflict, NotFound, ObjectCreated, PermanentError, Topics, TransientError, decode, make
from events import dead_letters as dlq
from events.bus import Message
from events.errors import InvalidInput
from events.s3 import decode_notification
from functions.records.collection import ensure_bucket
from functions.records.dead_letters import DEAD_LETTERS, DeadLetters
from functions.runtime.runner import Function, RetryPolicy, Runner, publish
from functions.services import dead_letters as service
from functions.table import FUNCTIONS
from infra.bus.memory import InMemoryBus
from infra.catalog.memory import MemoryCatalog
from infra.settings import Settings

pytestmark = pytest.mark.unit
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
SETTINGS = Settings(bus="memory", compute="none", admin_key="sk_admin_" + "x" * 32)
ROWS = {f.name: f for f in FUNCTIONS}


@pytest.fixture
async def bus():
    async with InMemoryBus() as bus:
        yield bus


@pytest.fixture
async def catalog():
    async with MemoryCatalog() as catalog:
        yield catalog


@pytest.fixture
def topics():
    return Topics(f"t{uuid.uuid4().hex[:8]}")


def record(key: str, size: object = 5) -> dict:
    return {"eventSource": "aws:s3", "eventTime": "2026-11-20T14:05:42.117Z", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": SETTINGS.data_bucket}, "object": {"key": f"acme/docs/{key}", "size": size,
                                                                        "eTag": '"abc"'}}}


class Flaky:
    """Refuses every event (PermanentError) until `fixed`."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[str] = []

    async def __call__(self, event) -> list:
        if not self.fixed:
            raise PermanentError("the bucket is not there yet")
        self.handled.append(event.payload.key)
        return []


@contextlib.asynccontextmanager
async def running(bus, topics, catalog, *functions: Function, **options) -> AsyncIterator[Runner]:
    runner = Runner(bus=bus, topics=topics, functions=list(functions), deps={"catalog": catalog, "settings": SETTINGS},
                    retry=FAST, fetch_timeout_s=0.02, **options)
    await bus.ensure_topics(topics.all())
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def recorded(catalog, n: int) -> list[dict]:
    async def enough():
        found = await catalog.find(DEAD_LETTERS, order_by="source_offset")
        return found if len(found) >= n else None

    return await until(enough)


async def test_one_bad_record_of_three_is_dead_lettered_alone_and_replayed_alone(bus, topics, catalog):
    await ensure_bucket(catalog, "acme", "docs")
    bad = record("b.txt", size="big")
    notification = json.dumps({"Records": [record("a.txt"), bad, record("c.txt")]}).encode()
    async with running(bus, topics, catalog, ROWS["notifications"], ROWS["dead_letters"]):
        await bus.publish(topics.s3_notifications, notification, key=b"minio")
        [letter] = await recorded(catalog, 1)

        # the two good records became ObjectCreated; the bad one is a dead letter of its own
        created = [decode(m.value) for m in bus.published(topics.objects)]
        assert sorted(e.payload.key for e in created) == ["a.txt", "c.txt"] and {e.namespace for e in created} == {"acme"}
        [dead] = bus.published(topics.dead_letters)
        assert json.loads(dead.value) == {"Records": [bad]} and dead.key == b"minio"
        assert dead.header(dlq.RECORD_INDEX) == b"1" and dead.header(dlq.ERROR_TYPE) == b"poison_message"
        assert b"Records[1].s3.object.size" in dead.header(dlq.ERROR)

        # the recorder's record: who, why, where from, the bytes
        assert letter["status"] == "open" and letter["function"] == "notifications" and letter["record_index"] == 1
        assert letter["source_topic"] == topics.s3_notifications and letter["source_offset"] == 0
        assert letter["namespace"] is None and letter["error_type"] == "poison_message" and letter["attempts"] == 0
        assert base64.b64decode(letter["value_b64"]) == dead.value and base64.b64decode(letter["key_b64"]) == b"minio"

        # replay: the record alone goes back to its topic (still bad: dead-lettered again, from its new offset)
        replayed = await service.replay(catalog, bus, letter["dead_letter_id"])
        assert replayed["status"] == "replayed" and replayed["replay_count"] == 1 and replayed["replayed_at"]
        again = bus.published(topics.s3_notifications)[-1]
        assert again.value == dead.value and again.key == b"minio"
        assert again.header(dlq.REPLAY_OF) == letter["dead_letter_id"].encode()
        first, second = await recorded(catalog, 2)
        assert first["dead_letter_id"] == letter["dead_letter_id"]
        assert (second["source_offset"], second["record_index"], second["status"]) == (again.offset, 0, "open")
    assert len(bus.published(topics.objects)) == 2  # the good records were handled once


async def test_a_replayed_dead_letter_is_handled_once_its_cause_is_fixed(bus, topics, catalog):
    flaky = Flaky()
    fn = Function("flaky", flaky, frozenset({"ObjectCreated"}))
    event = make(ObjectCreated(bucket="docs", key="late.txt", size=1, source="drop"), namespace="acme")
    outcomes: list[str] = []
    async with running(bus, topics, catalog, fn, ROWS["dead_letters"],
                       on_processed=lambda f, m, o: outcomes.append(f"{f.name}:{o}")):
        await publish(bus, topics, event)
        [letter] = await recorded(catalog, 1)
        assert letter["namespace"] == "acme" and letter["function"] == "flaky" and letter["error_type"] == "permanent"
        assert letter["record_index"] is None and letter["attempts"] == 1
        flaky.fixed = True
        await service.replay(catalog, bus, letter["dead_letter_id"])
        await until(lambda: asyncio.sleep(0, flaky.handled == ["late.txt"]))
    assert outcomes.count("flaky:dead_lettered") == 1 and outcomes.count("flaky:ok") == 1
    assert len(bus.published(topics.dead_letters)) == 1


async def test_listing_filters_and_discard_then_replay_is_refused(bus, topics, catalog):
    letters = DeadLetters(catalog)
    for offset, (function, value) in enumerate([("scan", b'{"namespace": "acme"}'), ("register", b'{"namespace": "globex"}'),
                                                 ("notifications", b'{"Records": []}')]):
        message = Message(topics.dead_letters, 0, offset, value, key=None, headers=tuple(dlq.headers(
            function=function, error_type="permanent", error="no", source_topic=topics.plugins, source_partition=0,
            source_offset=100 + offset, attempts=1)))
        event = dlq.read_dead_letter(message)
        assert await letters.record(event.event_id, event.payload)
        assert not await letters.record(event.event_id, event.payload)  # redelivered: recorded once
    assert sorted(r["function"] for r in await letters.list()) == ["notifications", "register", "scan"]
    assert [r["function"] for r in await letters.list(function="scan")] == ["scan"]
    assert [r["function"] for r in await letters.list(namespace="globex")] == ["register"]
    assert len(await letters.list(limit=1, offset=1)) == 1
    [scan] = await letters.list(function="scan")

    discarded = await service.discard(catalog, scan["dead_letter_id"])
    assert discarded["status"] == "discarded" and discarded["discarded_at"]
    assert (await service.discard(catalog, scan["dead_letter_id"]))["status"] == "discarded"  # twice: the same
    assert sorted(r["function"] for r in await letters.list(status="open")) == ["notifications", "register"]
    with pytest.raises(Conflict, match="discarded"):
        await service.replay(catalog, bus, scan["dead_letter_id"])
    with pytest.raises(NotFound):
        await service.replay(catalog, bus, "dlq_unknown")
    with pytest.raises(NotFound):
        await service.discard(catalog, "dlq_unknown")
    assert bus.published(topics.plugins) == []  # nothing was replayed


def test_a_dead_letter_without_our_headers_is_still_read_and_named_by_where_it_lies(topics):
    message = Message(topics.dead_letters, 0, 7, b"\xff\x00garbage", headers=(("x-sluice-source-offset", b"nan"),))
    event = dlq.read_dead_letter(message)
    letter = event.payload
    assert (letter.function, letter.source_topic, letter.source_offset, letter.namespace) == (None, None, None, None)
    assert letter.value == b"\xff\x00garbage" and event.event_id == dlq.read_dead_letter(message).event_id
    moved = dlq.read_dead_letter(Message(topics.dead_letters, 0, 8, b"\xff\x00garbage"))
    assert moved.event_id != event.event_id


class BrokenCatalog(MemoryCatalog):
    """Inserts into `dead_letters` fail: `permanent` times with InvalidInput, or `transient` times."""

    def __init__(self, *, permanent: int = 0, transient: int = 0) -> None:
        super().__init__()
        self.permanent, self.transient = permanent, transient

    async def insert(self, kind, key, doc):
        if kind == DEAD_LETTERS and self.permanent:
            self.permanent -= 1
            raise InvalidInput("the catalog refuses this record")
        if kind == DEAD_LETTERS and self.transient:
            self.transient -= 1
            raise TransientError("the catalog is down")
        return await super().insert(kind, key, doc)


async def test_the_recorder_never_writes_into_its_own_topic_and_waits_out_transient_failures(bus, topics):
    outcomes: list[str] = []
    async with BrokenCatalog(permanent=1, transient=5) as catalog:
        async with running(bus, topics, catalog, ROWS["dead_letters"], on_processed=lambda f, m, o: outcomes.append(o)):
            await bus.publish(topics.dead_letters, b"one", headers=dlq.headers(
                function="scan", error_type="permanent", error="x", source_topic=topics.plugins, source_partition=0,
                source_offset=1, attempts=1))
            await until(lambda: asyncio.sleep(0, outcomes == ["dead_lettered"]))  # refused for good: logged, left in the topic
            await bus.publish(topics.dead_letters, b"two", headers=dlq.headers(
                function="scan", error_type="permanent", error="x", source_topic=topics.plugins, source_partition=0,
                source_offset=2, attempts=1))
            [letter] = await recorded(catalog, 1)  # five transient failures (more than max_attempts), then recorded
        assert base64.b64decode(letter["value_b64"]) == b"two" and catalog.transient == 0
    assert [m.value for m in bus.published(topics.dead_letters)] == [b"one", b"two"]  # nothing written back
    assert outcomes == ["dead_lettered", "ok"]


def test_a_notification_with_only_bad_records_gives_no_envelope_and_one_reject_each():
    value = json.dumps({"Records": [record("a.txt", size=-1), "not a record"]}).encode()
    decoded = decode_notification(value)
    assert isinstance(decoded, dlq.Decoded) and decoded.envelope is None
    assert [r.index for r in decoded.rejects] == [0, 1]
    assert all(isinstance(r.error, PermanentError) and r.error.details["record"] == r.index for r in decoded.rejects)
    assert json.loads(decoded.rejects[1].value) == {"Records": ["not a record"]}
