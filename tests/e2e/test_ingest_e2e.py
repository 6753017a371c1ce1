"""The heart of the product through real parts: objects written to the real S3 endpoint, the
bucket's notification published on the real broker, the notifications and ingest functions,
a Ray Data job on a local Ray running the builtin text_embedding plugin — and a subscriber on the
broker sees `IngestCompleted` whose counts are the chunks written and the points in the index."""

from __future__ import annotations

import asyncio

import pytest

from engine.plugins.builtin.text_embedding.processors.chunker import split_text
from tests.fixtures.e2e import next_completion, notification, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.torch]
ADMIN = "sk_admin_e2e_ingest-0123456789abc"

TEXTS = {
    "manuals/gates.txt": ("A sluice gate is a movable barrier that controls the flow of water. " * 9).strip(),
    "manuals/locks.txt": "Canal locks raise and lower boats between stretches of water at different levels.",
    "manuals/weirs.md": ("# Weirs\n\n" + "A weir is a low dam built across a river to raise the level of water upstream. " * 6).strip(),
}


async def test_s3_objects_and_their_notifications_on_the_broker_end_in_counted_completion(
    tmp_path, kafka_bootstrap, s3_endpoint, ray_cluster,
):
    async with running_stack(tmp_path, kafka_bootstrap, s3_endpoint, admin_key=ADMIN, subscribe=["ingest"]) as stack:
        platform, api, headers, bucket = stack.platform, stack.api, stack.headers, stack.bucket
        assert (await api.post("/v1/namespaces", json={"namespace_name": "acme"}, headers=headers)).status_code == 201
        r = await api.post("/v1/namespaces/acme/collections", headers=headers, json={
            "collection_name": "manuals", "source": {"bucket": bucket, "prefix": "manuals/"},
            "feature_extractor": {"feature_extractor_name": "text_embedding", "parameters": {"chunk_size": 200, "chunk_overlap": 30}},
        })
        assert r.status_code == 201, r.text
        collection_id = r.json()["collection_id"]

        await platform.objects("acme").ensure_bucket(bucket)
        raw = []
        for key, text in TEXTS.items():
            content_type = "text/markdown" if key.endswith(".md") else "text/plain"
            info = await platform.objects("acme").put_bytes(bucket, key, text.encode(), content_type=content_type)
            raw.append(notification(*platform.objects("acme").locate(bucket, key), info.size, info.etag))
        for body in raw:
            await platform.bus.publish(platform.topics.s3_notifications, body)

        done = await next_completion(stack.subscribers["ingest"])
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
        await stack.scheduler.drain(60)
        detail = (await api.get(f"/v1/namespaces/acme/collections/{collection_id}", headers=headers)).json()
        assert detail["document_count"] == chunks and detail["vector_indexes"][0]["vector_count"] == chunks

        r = await api.post(f"/v1/namespaces/acme/collections/{collection_id}/search", headers=headers,
                           json={"query": "boats between water levels", "limit": 3})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["source"]["key"] == "manuals/locks.txt"
