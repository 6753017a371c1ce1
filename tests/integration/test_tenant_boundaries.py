"""Tenants cannot claim the platform's buckets, and a registered archive that changed in the store
is never handed out as the version's source (through the real REST app and the local store)."""

from __future__ import annotations

import pytest

from functions.records.collection import BUCKET_BINDINGS
from functions.runtime.dropfolder import DropFolder
from tests.integration.test_models_rest import ADMIN, auth, key_for, running
from tests.integration.test_plugins_rest import hash_plugin, push
from tests.integration.test_rest import assert_error

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bucket", ["sluice-plugins", "sluice-models", "sluice-anything"])
async def test_a_tenant_cannot_ask_for_an_upload_url_into_a_platform_bucket(tmp_path, bucket):
    async with running(tmp_path) as (client, platform):
        key = await key_for(client, "acme")
        r = await client.post(f"/v1/namespaces/acme/buckets/{bucket}/uploads",
                              json={"key": "acme/plugins/victim/1.0.0.zip", "content_type": "application/zip"},
                              headers=auth(key))
        err = assert_error(r, 403, "forbidden")
        assert "reserved for the platform" in err["message"] and err["details"]["field"] == "bucket"
        assert await platform.catalog.get(BUCKET_BINDINGS, bucket) is None


async def test_a_configured_platform_bucket_is_reserved_whatever_its_name(tmp_path):
    async with running(tmp_path, plugins_bucket="archives-of-plugins") as (client, _):
        key = await key_for(client, "acme")
        r = await client.post("/v1/namespaces/acme/collections", headers=auth(key), json={
            "collection_name": "c1", "source": {"bucket": "archives-of-plugins", "prefix": ""},
            "feature_extractor": {"feature_extractor_name": "text_embedding"}})
        assert_error(r, 403, "forbidden")


async def test_the_drop_folder_sets_aside_files_for_a_platform_bucket(tmp_path):
    async with running(tmp_path) as (_, platform):
        root = tmp_path / "drop"
        target = root / "acme" / "sluice-plugins" / "trojan.zip"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"PK")
        folder = DropFolder(root, platform.store, platform.catalog, platform.vectors, platform.bus, platform.topics,
                            reserved=(platform.settings.plugins_bucket, platform.settings.models_bucket))
        await folder.poll(), await folder.poll()
        assert not target.exists()
        reasons = {p.name: p.read_text() for p in (root / ".rejected").rglob("*.reason")}
        assert "reserved for the platform" in reasons["trojan.zip.reason"]
        assert await platform.catalog.get(BUCKET_BINDINGS, "sluice-plugins") is None
        assert await platform.store.head("sluice-plugins", "trojan.zip") is None


async def test_a_source_whose_stored_bytes_changed_is_refused_not_served(tmp_path):
    async with running(tmp_path) as (client, platform):
        r = await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0", key=ADMIN)
        assert r.status_code == 200 and r.json()["status"] == "REGISTERED", r.text
        plugin_id = r.json()["plugin_id"]
        good = await client.get(f"/v1/namespaces/acme/plugins/{plugin_id}/source", headers=auth(ADMIN))
        assert good.status_code == 200 and good.content[:2] == b"PK"
        version = await platform.catalog.get("plugin_versions", plugin_id)
        await platform.store.put_bytes(version["archive"]["bucket"], version["archive"]["key"], good.content + b"trojan")
        err = assert_error(await client.get(f"/v1/namespaces/acme/plugins/{plugin_id}/source", headers=auth(ADMIN)),
                           409, "conflict")
        assert "no longer matches the digest" in err["message"]
