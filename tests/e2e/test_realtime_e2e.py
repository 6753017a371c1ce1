"""Realtime through real parts: a plugin with `realtime.py` pushed over REST into the real S3
endpoint, `DeployPlugin` and its status changes on the real broker, the replica on Ray Serve
fetching the archive from S3 itself, objects ingested from S3 notifications, and feature_search
answering known queries with the expected document first."""

from __future__ import annotations

import time

import httpx
import pytest

from events import decode
from tests.fixtures.e2e import next_completion, notification, running_stack
from tests.fixtures.plugins import PLUGINS, zip_folder

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
ADMIN = "sk_admin_e2e_realtime-0123456789a"

DOCS = {
    "fish.txt": "salmon swim upstream through the fish ladder beside the dam",
    "gate.txt": "the sluice gate controls the canal water level",
    "stone.txt": "granite quarries supplied the cathedral stone",
}


async def test_push_deploy_ingest_and_feature_search_through_kafka_and_s3(tmp_path, kafka_bootstrap, s3_endpoint, ray_cluster):
    async with running_stack(tmp_path, kafka_bootstrap, s3_endpoint, admin_key=ADMIN, subscribe=["ingest", "deployments"],
                             api_timeout=180) as stack:
        platform, api, headers, bucket = stack.platform, stack.api, stack.headers, stack.bucket
        assert (await api.post("/v1/namespaces", json={"namespace_name": "acme"}, headers=headers)).status_code == 201
        r = await api.post("/v1/namespaces/acme/plugins/uploads", json={"name": "hash_realtime", "version": "1.0.0"}, headers=headers)
        ticket = r.json()
        async with httpx.AsyncClient(timeout=60) as plain:  # the presigned URL is the real S3 endpoint's
            put = await plain.put(ticket["presigned_url"], headers=ticket["upload_headers"],
                                  content=zip_folder(PLUGINS / "fixtures" / "hash_realtime", top="hash_realtime"))
        assert put.status_code == 200, put.text
        r = await api.post(f"/v1/namespaces/acme/plugins/uploads/{ticket['upload_id']}/confirm", headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "REGISTERED", r.text
        plugin_id = r.json()["plugin_id"]

        r = await api.post(f"/v1/namespaces/acme/plugins/{plugin_id}/deploy", headers=headers)
        assert r.status_code == 202 and r.json()["status"] == "QUEUED", r.text
        seen: list[str] = []
        deadline = time.monotonic() + 180
        while seen[-1:] not in (["DEPLOYED"], ["FAILED"]) and time.monotonic() < deadline:
            for message in await stack.subscribers["deployments"].fetch(timeout_s=0.5):
                event = decode(message.value)
                if event.type == "PluginDeploymentChanged" and event.payload.plugin_id == plugin_id:
                    seen.append(event.payload.status)
        assert seen == ["QUEUED", "PENDING", "IN_PROGRESS", "DEPLOYED"], seen
        status = (await api.get(f"/v1/namespaces/acme/plugins/{plugin_id}/status", headers=headers)).json()
        assert status["status"] == "DEPLOYED" and status["mode"] == "realtime", status

        r = await api.post("/v1/namespaces/acme/collections", headers=headers, json={
            "collection_name": "docs", "source": {"bucket": bucket},
            "feature_extractor": {"feature_extractor_name": "hash_realtime"}})
        assert r.status_code == 201, r.text
        collection_id = r.json()["collection_id"]
        await platform.objects("acme").ensure_bucket(bucket)
        for key, text in DOCS.items():
            info = await platform.objects("acme").put_bytes(bucket, key, text.encode(), content_type="text/plain")
            raw = notification(*platform.objects("acme").locate(bucket, key), info.size, info.etag)
            await platform.bus.publish(platform.topics.s3_notifications, raw)
        done = await next_completion(stack.subscribers["ingest"])
        assert done.type == "IngestCompleted" and done.payload.documents_written == len(DOCS), done.payload

        for query, expected in [("canal sluice gate", "gate.txt"), ("salmon ladder", "fish.txt"), ("cathedral granite", "stone.txt")]:
            r = await api.post("/v1/namespaces/acme/retrievers/feature_search", headers=headers, json={
                "collection_id": collection_id, "query": {"text": query}, "limit": 3,
                "feature_uri": "sluice://hash_realtime@1.0.0/hash_embedding"})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["source"]["key"] == expected, (query, r.json()["results"])
