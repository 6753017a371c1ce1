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
from functions.records.collection import ensure_bucket
from functions.runtime.runner import Runner
from functions.table import FUNCTIONS
from infra.bus.kafka import KafkaBus
from infra.catalog.sqlite import SqliteCatalog
from infra.settings import Settings

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[1] / "events"


def sample(name: str) -> bytes:
    return (EVENTS / name).read_bytes()


SETTINGS = Settings(bus="memory", compute="none", admin_key="sk_admin_" + "x" * 32)


def in_tenant_data(name: str, namespace: str = "acme", bucket: str = "docs") -> bytes:
    """The recorded sample, as if its objects were written into `namespace`'s `bucket`: in the
    data bucket under `{namespace}/{bucket}/`, where Sluice keeps tenants' objects."""
    raw = json.loads(sample(name))
    for record in raw["Records"]:
        record["s3"]["bucket"]["name"] = SETTINGS.data_bucket
        record["s3"]["object"]["key"] = f"{namespace}/{bucket}/" + record["s3"]["object"]["key"]
    return json.dumps(raw).encode()


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
async def test_objects_in_a_namespaces_folder_become_object_created_in_that_namespace(catalog, name):
    event = decode_notification(in_tenant_data(name))
    original = decode_notification(sample(name))
    await ensure_bucket(catalog, "acme", "docs")
    created = await notifications.handle(event, catalog=catalog, settings=SETTINGS)
    assert created and [(c.payload.bucket, c.payload.key, c.payload.etag) for c in created] == [
        ("docs", o.key, o.etag) for o in original.payload.objects]
    assert {c.namespace for c in created} == {"acme"} and all(c.causation_id == event.event_id for c in created)


async def test_objects_outside_tenant_data_or_of_an_unknown_bucket_are_dropped(catalog):
    await ensure_bucket(catalog, "acme", "docs")
    for raw in (sample("s3_object_created_put.json"), in_tenant_data("s3_object_created_put.json", bucket="other"),
                in_tenant_data("s3_object_created_put.json", namespace="globex")):
        assert await notifications.handle(decode_notification(raw), catalog=catalog, settings=SETTINGS) == []


@pytest.mark.e2e
async def test_a_notification_on_the_broker_reaches_subscribers_as_object_created(kafka_bootstrap, catalog):
    from events.topics import Topics

    topics = Topics(f"n{uuid.uuid4().hex[:8]}")
    raw = json.loads(in_tenant_data("minio_object_created_put.json"))
    await ensure_bucket(catalog, "acme", "docs")
    [fn] = [f for f in FUNCTIONS if f.name == "notifications"]
    async with KafkaBus(kafka_bootstrap, session_timeout_ms=3000) as bus:
        await bus.ensure_topics(topics.all())
        subscriber = await bus.subscribe([topics.objects], group_id=f"sub-{uuid.uuid4().hex}")
        runner = Runner(bus=bus, topics=topics, functions=[fn], deps={"catalog": catalog, "settings": SETTINGS})
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
    assert event.payload.bucket == "docs"
