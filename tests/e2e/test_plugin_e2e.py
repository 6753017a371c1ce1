"""A plugin's whole way in, through real parts: REST upload request → presigned PUT to the real
S3 endpoint → confirm → `PluginUploadConfirmed` on the real broker → scan → register → a
subscriber on the broker sees `PluginRegistered`."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from events import decode
from functions.rest.app import create_app
from functions.runtime.idempotency import IdempotencyStore
from functions.runtime.runner import Runner
from functions.table import FUNCTIONS
from infra.bootstrap import bootstrap
from infra.bus.kafka import KafkaBus
from infra.settings import Settings
from tests.fixtures.plugins import HASH_EMBEDDER, zip_folder

pytestmark = pytest.mark.e2e
ADMIN = "sk_admin_e2e_plugins-0123456789ab"


async def test_rest_upload_through_s3_and_the_broker_ends_in_plugin_registered_for_a_subscriber(
    tmp_path, kafka_bootstrap, s3_endpoint
):
    settings = Settings(
        data_dir=tmp_path, admin_key=ADMIN, compute="none", topic_prefix=f"e2e{uuid.uuid4().hex[:8]}",
        kafka_bootstrap=kafka_bootstrap, kafka_session_timeout_ms=3000,
        s3_endpoint_url=s3_endpoint, s3_access_key_id="test", s3_secret_access_key="test",
        plugins_bucket=f"plugins-{uuid.uuid4().hex[:8]}",
    )
    platform = bootstrap(settings, bus=KafkaBus(kafka_bootstrap, session_timeout_ms=3000))
    async with platform:
        assert platform.store.adapter_name.startswith("s3")
        await platform.bus.ensure_topics(platform.topics.all())
        subscriber = await platform.bus.subscribe([platform.topics.plugins], group_id=f"subscriber-{uuid.uuid4().hex}")
        runner = Runner(
            bus=platform.bus, topics=platform.topics, functions=FUNCTIONS, deps=platform.deps(),
            idempotency=IdempotencyStore(platform.catalog),
        )
        await runner.start()
        try:
            transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=120) as api:
                assert (await api.post("/v1/namespaces", json={"namespace_name": "acme"}, headers=headers)).status_code == 201
                ticket = (await api.post("/v1/namespaces/acme/plugins/uploads", json={"name": "hash_embedder"}, headers=headers)).json()
                assert ticket["presigned_url"].startswith(s3_endpoint)
                async with httpx.AsyncClient(timeout=60) as s3:  # a real HTTP PUT, without Sluice credentials
                    put = await s3.put(ticket["presigned_url"], content=zip_folder(HASH_EMBEDDER, top="hash_embedder"),
                                       headers=ticket["upload_headers"])
                assert put.status_code == 200, put.text
                confirm = await api.post(f"/v1/namespaces/acme/plugins/uploads/{ticket['upload_id']}/confirm",
                                         params={"wait": 120}, headers=headers)
                assert confirm.status_code == 200, confirm.text
                outcome = confirm.json()

            seen: dict[str, object] = {}
            deadline = asyncio.get_running_loop().time() + 60
            while "PluginRegistered" not in seen and asyncio.get_running_loop().time() < deadline:
                for message in await subscriber.fetch(timeout_s=0.5):
                    event = decode(message.value)
                    seen[event.type] = event
        finally:
            await subscriber.close()
            await runner.stop()

        registered = seen["PluginRegistered"]
        assert list(seen) == ["PluginUploadConfirmed", "PluginScanned", "PluginRegistered"]
        assert registered.namespace == "acme"
        assert registered.payload.plugin_id == outcome["plugin_id"]
        assert registered.payload.feature_uris == ["sluice://hash_embedder@1.0.0/hash_embedding"]
        assert registered.correlation_id == seen["PluginUploadConfirmed"].correlation_id
        stored = await platform.store.head(settings.plugins_bucket, "acme/plugins/hash_embedder/1.0.0/plugin.zip")
        assert stored is not None and stored.size > 0
