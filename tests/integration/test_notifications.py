"""Raw bucket notifications → `ObjectCreated` in the bucket's namespace: the recorded AWS and MinIO
samples, through the handler and through the runner on the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from events import decode
from events.errors import PoisonMessage
from events.s3 import decode_notification
from functions.handlers import notifications
from functions.records.collection import BUCKET_BINDINGS
from functions.runtime.runner import Runner
from functions.table import FUNCTIONS
from infra.bus.kafka import KafkaBus
from infra.catalog.sqlite import SqliteCatalog

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[1] / "events"


def sample(name: str) -> bytes:
    return (EVENTS / name).read_bytes()


def test_a_redelivered_notification_decodes_to_the_same_event_id():
    first, again = decode_notification(sample("s3_object_created_put.json")), decode_notification(sample("s3_object_created_put.json"))
    assert first.event_id == again.event_id and first.type == "BucketNotification"
    assert decode_notification(sample("s3_test_event.json")).payload.objects == []
    with pytest.raises(PoisonMessage):
        decode_notification(b"not json")


@pytest.fixture
async def catalog(tmp_path):
    async with SqliteCatalog(tmp_path / "catalog.sqlite3") as catalog:
        yield catalog


@pytest.mark.parametrize("name", ["s3_object_created_put.json", "minio_object_created_put.json", "s3_multipart_and_copy.json"])
async def test_objects_of_a_bound_bucket_become_object_created_in_its_namespace(catalog, name):
    event = decode_notification(sample(name))
    for bucket in {o.bucket for o in event.payload.objects}:
        await catalog.insert(BUCKET_BINDINGS, bucket, {"bucket": bucket, "namespace": "acme"})
    created = await notifications.handle(event, catalog=catalog)
    assert [c.payload for c in created] == event.payload.objects and created
    assert {c.namespace for c in created} == {"acme"} and all(c.causation_id == event.event_id for c in created)


async def test_objects_of_an_unbound_bucket_are_dropped(catalog):
    assert await notifications.handle(decode_notification(sample("s3_object_created_put.json")), catalog=catalog) == []


@pytest.mark.e2e
async def test_a_notification_on_the_broker_reaches_subscribers_as_object_created(kafka_bootstrap, catalog):
    from events.topics import Topics

    topics = Topics(f"n{uuid.uuid4().hex[:8]}")
    raw = json.loads(sample("minio_object_created_put.json"))
    bucket = raw["Records"][0]["s3"]["bucket"]["name"]
    await catalog.insert(BUCKET_BINDINGS, bucket, {"bucket": bucket, "namespace": "acme"})
    [fn] = [f for f in FUNCTIONS if f.name == "notifications"]
    async with KafkaBus(kafka_bootstrap, session_timeout_ms=3000) as bus:
        await bus.ensure_topics(topics.all())
        subscriber = await bus.subscribe([topics.objects], group_id=f"sub-{uuid.uuid4().hex}")
        runner = Runner(bus=bus, topics=topics, functions=[fn], deps={"catalog": catalog})
        await runner.start()
        try:
            await bus.publish(topics.s3_notifications, json.dumps(raw).encode())
            got = []
            deadline = asyncio.get_running_loop().time() + 30
            while not got and asyncio.get_running_loop().time() < deadline:
                got += await subscriber.fetch(timeout_s=0.5)
        finally:
            await subscriber.close()
            await runner.stop()
    event = decode(got[0].value)
    assert event.type == "ObjectCreated" and event.namespace == "acme" and event.payload.source == "minio"
    assert event.payload.bucket == bucket
