"""The heart of the product through real parts: objects written to the real S3 endpoint, the
bucket's notification published on the real broker, the notifications and ingest functions,
a Ray Data job on a local Ray running the builtin text_embedding plugin — and a subscriber on the
broker sees `IngestCompleted` whose counts are the chunks written and the points in the index."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from engine.plugins.builtin.text_embedding.processors.chunker import split_text
from engine.realtime import control
from events import decode
from functions.idempotency import IdempotencyStore
from functions.ingest import IngestScheduler
from functions.rest.app import create_app
from functions.runner import Runner
from functions.table import FUNCTIONS
from infra.bootstrap import bootstrap
from infra.bus.kafka import KafkaBus
from infra.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.torch]
ADMIN = "sk_admin_e2e_ingest"

TEXTS = {
    "manuals/gates.txt": ("A sluice gate is a movable barrier that controls the flow of water. " * 9).strip(),
    "manuals/locks.txt": "Canal locks raise and lower boats between stretches of water at different levels.",
    "manuals/weirs.md": ("# Weirs\n\n" + "A weir is a low dam built across a river to raise the level of water upstream. " * 6).strip(),
}


def notification(bucket: str, key: str, size: int, etag: str) -> bytes:
    """An S3 ObjectCreated:Put notification as AWS sends it (key URL-encoded, spaces as '+')."""
    from urllib.parse import quote_plus

    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventTime": "2026-11-22T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "sluice", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag, "sequencer": uuid.uuid4().hex[:18].upper()}},
    }]}).encode()


async def next_completion(subscriber, timeout: float = 240.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for message in await subscriber.fetch(timeout_s=0.5):
            event = decode(message.value)
            if event.type in ("IngestCompleted", "IngestFailed"):
                return event
    raise AssertionError(f"no IngestCompleted within {timeout}s")


async def test_s3_objects_and_their_notifications_on_the_broker_end_in_counted_completion(
    tmp_path, kafka_bootstrap, s3_endpoint, ray_cluster,
):
    settings = Settings(
        data_dir=tmp_path, admin_key=ADMIN, compute="ray", topic_prefix=f"e2e{uuid.uuid4().hex[:8]}",
        kafka_bootstrap=kafka_bootstrap, kafka_session_timeout_ms=3000,
        s3_endpoint_url=s3_endpoint, s3_access_key_id="test", s3_secret_access_key="test",
        plugins_bucket=f"plugins-{uuid.uuid4().hex[:8]}", ingest_max_delay_s=1.0,
    )
    bucket = f"docs-{uuid.uuid4().hex[:8]}"
    platform = bootstrap(settings, bus=KafkaBus(kafka_bootstrap, session_timeout_ms=3000))
    async with platform:
        await platform.bus.ensure_topics(platform.topics.all())
        subscriber = await platform.bus.subscribe([platform.topics.ingest], group_id=f"subscriber-{uuid.uuid4().hex}")
        scheduler = IngestScheduler.for_platform(platform)
        runner = Runner(
            bus=platform.bus, topics=platform.topics, functions=FUNCTIONS, deps={**platform.deps(), "ingest": scheduler},
            idempotency=IdempotencyStore(platform.catalog),
        )
        await runner.start()
        stop = asyncio.Event()
        scheduling = asyncio.create_task(scheduler.run(stop))
        try:
            transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=120) as api:
                assert (await api.post("/v1/namespaces", json={"namespace_name": "acme"}, headers=headers)).status_code == 201
                r = await api.post("/v1/namespaces/acme/collections", headers=headers, json={
                    "collection_name": "manuals", "source": {"bucket": bucket, "prefix": "manuals/"},
                    "feature_extractor": {"feature_extractor_name": "text_embedding", "parameters": {"chunk_size": 200, "chunk_overlap": 30}},
                })
                assert r.status_code == 201, r.text
                collection_id = r.json()["collection_id"]

                await platform.store.ensure_bucket(bucket)
                raw = []
                for key, text in TEXTS.items():
                    content_type = "text/markdown" if key.endswith(".md") else "text/plain"
                    info = await platform.store.put_bytes(bucket, key, text.encode(), content_type=content_type)
                    raw.append(notification(bucket, key, info.size, info.etag))
                for body in raw:
                    await platform.bus.publish(platform.topics.s3_notifications, body)

                done = await next_completion(subscriber)
                assert done.type == "IngestCompleted", done.payload
                chunks = sum(len(split_text(t, 200, 30)) for t in TEXTS.values())
                assert chunks > len(TEXTS)
                assert done.payload.status == "COMPLETED" and done.payload.objects == len(TEXTS)
                assert done.payload.documents_written == chunks
                detail = (await api.get(f"/v1/namespaces/acme/collections/{collection_id}", headers=headers)).json()
                [index] = detail["vector_indexes"]
                assert done.payload.vectors_upserted == {"text_embedding": index["vector_count"]} == {"text_embedding": chunks}
                assert detail["document_count"] == chunks

                # the store redelivers every notification: counts stay where they are
                for body in raw:
                    await platform.bus.publish(platform.topics.s3_notifications, body)
                await asyncio.sleep(3)
                await scheduler.drain(60)
                detail = (await api.get(f"/v1/namespaces/acme/collections/{collection_id}", headers=headers)).json()
                assert detail["document_count"] == chunks and detail["vector_indexes"][0]["vector_count"] == chunks

                r = await api.post(f"/v1/namespaces/acme/collections/{collection_id}/search", headers=headers,
                                   json={"query": "boats between water levels", "limit": 3})
                assert r.status_code == 200, r.text
                assert r.json()["results"][0]["source"]["key"] == "manuals/locks.txt"
        finally:
            stop.set()
            await scheduling
            await subscriber.close()
            await runner.stop()
            await asyncio.to_thread(control.delete_all)  # the session's Ray outlives this test
