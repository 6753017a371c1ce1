"""The runner through real buses: the Kafka-protocol broker, and the durable SQLite log that
`sluice up` uses. Publish → handler → subscriber; poison → dead letters; crash → redelivery."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from events import ObjectCreated, Topics, decode, make
from events.payloads import IngestStarted
from functions.runtime.runner import Function, RetryPolicy, Runner, publish
from infra.bus.kafka import KafkaBus
from infra.catalog.sqlite import SqliteCatalog

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


async def collect(bus, topic: str, want: int, timeout: float = 30.0) -> list:
    consumer = await bus.subscribe([topic], group_id=f"subscriber-{uuid.uuid4().hex}")
    got: list = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(got) < want and loop.time() < deadline:
            got += await consumer.fetch(timeout_s=0.5)
    finally:
        await consumer.close()
    return got


async def answer(event):
    return [event.child(IngestStarted(task_id=event.payload.key, collection_id="c", objects=1))]


async def test_an_event_published_through_the_broker_reaches_a_handler_and_its_result_a_subscriber(kafka_bootstrap):
    topics = Topics(f"e2e{uuid.uuid4().hex[:8]}")
    async with KafkaBus(kafka_bootstrap, session_timeout_ms=3000) as bus:
        await bus.ensure_topics(topics.all())
        runner = Runner(bus=bus, topics=topics, functions=[Function("answer", answer, frozenset({"ObjectCreated"}))], deps={})
        await runner.start()
        try:
            event = make(ObjectCreated(bucket="docs", key="hello.txt", size=5, source="s3"), namespace="acme")
            await publish(bus, topics, event)
            [message] = await collect(bus, topics.ingest, 1)
        finally:
            await runner.stop()
    result = decode(message.value)
    assert result.type == "IngestStarted"
    assert result.causation_id == event.event_id and result.correlation_id == event.correlation_id
    assert result.payload.task_id == "hello.txt"


async def test_poison_lands_in_dead_letters_and_the_good_message_behind_it_is_handled(kafka_bootstrap):
    topics = Topics(f"e2e{uuid.uuid4().hex[:8]}")
    async with KafkaBus(kafka_bootstrap, session_timeout_ms=3000) as bus:
        await bus.ensure_topics(topics.all())
        runner = Runner(
            bus=bus, topics=topics, functions=[Function("answer", answer, frozenset({"ObjectCreated"}))], deps={},
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.01),
        )
        poison = b"\x00not an event"
        await bus.publish(topics.objects, poison, key=b"acme")
        good = make(ObjectCreated(bucket="docs", key="after-poison.txt", size=1, source="s3"), namespace="acme")
        await publish(bus, topics, good)
        await runner.start()
        try:
            [dead] = await collect(bus, topics.dead_letters, 1)
            [result] = await collect(bus, topics.ingest, 1)
        finally:
            await runner.stop()
    assert dead.value == poison
    assert dead.header("x-sluice-error-type") == b"poison_message"
    assert dead.header("x-sluice-source-topic") == topics.objects.encode()
    assert decode(result.value).causation_id == good.event_id


def run_worker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.e2e.crash_worker", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("bus_kind", ["kafka", "sqlite"])
async def test_killing_the_runner_before_commit_redelivers_and_the_effect_happens_once(bus_kind, tmp_path, request):
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    catalog_path = tmp_path / "catalog.sqlite3"
    if bus_kind == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        bus_args = ["--bus", "kafka", "--bootstrap", bootstrap]
        bus = KafkaBus(bootstrap, session_timeout_ms=3000)
    else:
        from infra.bus.sqlite import SqliteLogBus

        bus_args = ["--bus", "sqlite", "--bus-path", str(tmp_path / "bus.sqlite3")]
        bus = SqliteLogBus(tmp_path / "bus.sqlite3")
    common = [*bus_args, "--catalog", str(catalog_path), "--prefix", prefix]

    event = make(ObjectCreated(bucket="docs", key="once.txt", size=1, source="s3"), namespace="acme")
    async with bus:
        await bus.ensure_topics(topics.all())
        await publish(bus, topics, event)

    crashed = await asyncio.to_thread(run_worker, *common, "--crash-before-commit")
    assert crashed.returncode == 17, crashed.stdout + crashed.stderr

    resumed = await asyncio.to_thread(run_worker, *common)
    assert resumed.returncode == 0, resumed.stderr
    assert "processed=1" in resumed.stdout, resumed.stdout + resumed.stderr  # redelivered

    async with SqliteCatalog(catalog_path) as catalog:
        effects = await catalog.find("effects")
    assert len(effects) == 1, effects  # the handler's effect happened once
    assert effects[0]["event_id"] == event.event_id

    async with bus:
        results = await collect(bus, topics.ingest, 2, timeout=10)
    assert {decode(m.value).event_id for m in results} and len({decode(m.value).event_id for m in results}) == 1

    again = await asyncio.to_thread(run_worker, *common, "--max-wait", "5")
    assert "processed=0" in again.stdout, again.stdout + again.stderr  # committed now
