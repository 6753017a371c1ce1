"""Realtime through real parts: a plugin with `realtime.py` pushed over REST into the real S3
endpoint, `DeployPlugin` and its status changes on the real broker, the replica on Ray Serve
fetching the archive from S3 itself, objects ingested from S3 notifications, and feature_search
answering known queries with the expected document first."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

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
from tests.e2e.test_ingest_e2e import next_completion, notification
from tests.fixtures.plugins import PLUGINS, zip_folder

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
ADMIN = "sk_admin_e2e_realtime"

DOCS = {
    "fish.txt": "salmon swim upstream through the fish ladder beside the dam",
    "gate.txt": "the sluice gate controls the canal water level",
    "stone.txt": "granite quarries supplied the cathedral stone",
}


async def test_push_deploy_ingest_and_feature_search_through_kafka_and_s3(tmp_path, kafka_bootstrap, s3_endpoint, ray_cluster):
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
        ingest_events = await platform.bus.subscribe([platform.topics.ingest], group_id=f"sub-{uuid.uuid4().hex}")
        deploy_events = await platform.bus.subscribe([platform.topics.deployments], group_id=f"sub-{uuid.uuid4().hex}")
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
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=180) as api:
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
                    for message in await deploy_events.fetch(timeout_s=0.5):
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
                await platform.store.ensure_bucket(bucket)
                for key, text in DOCS.items():
                    info = await platform.store.put_bytes(bucket, key, text.encode(), content_type="text/plain")
                    await platform.bus.publish(platform.topics.s3_notifications, notification(bucket, key, info.size, info.etag))
                done = await next_completion(ingest_events)
                assert done.type == "IngestCompleted" and done.payload.documents_written == len(DOCS), done.payload

                for query, expected in [("canal sluice gate", "gate.txt"), ("salmon ladder", "fish.txt"), ("cathedral granite", "stone.txt")]:
                    r = await api.post("/v1/namespaces/acme/retrievers/feature_search", headers=headers, json={
                        "collection_id": collection_id, "query": {"text": query}, "limit": 3,
                        "feature_uri": "sluice://hash_realtime@1.0.0/hash_embedding"})
                    assert r.status_code == 200, r.text
                    assert r.json()["results"][0]["source"]["key"] == expected, (query, r.json()["results"])
        finally:
            stop.set()
            await scheduling
            await ingest_events.close()
            await deploy_events.close()
            await runner.stop()
            await asyncio.to_thread(control.delete_all)
