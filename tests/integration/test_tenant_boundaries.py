"""Tenants' buckets are their namespace's own folders: no name reaches a platform bucket or another
namespace's data, and a registered archive that changed in the store is never handed out as the
version's source (through the real REST app and the local store)."""

from __future__ import annotations

import pytest

from functions.runtime.dropfolder import DropFolder
from tests.integration.test_models_rest import ADMIN, auth, key_for, running
from tests.integration.test_plugins_rest import hash_plugin, push
from tests.integration.test_rest import assert_error

pytestmark = pytest.mark.integration


async def upload(client, namespace: str, bucket: str, key: str, body: bytes, api_key: str) -> dict:
    r = await client.post(f"/v1/namespaces/{namespace}/buckets/{bucket}/uploads",
                          json={"key": key, "content_type": "application/octet-stream"}, headers=auth(api_key))
    assert r.status_code == 201, r.text
    ticket = r.json()
    put = await client.put(ticket["presigned_url"], content=body, headers=ticket["upload_headers"])
    assert put.status_code in (200, 204), put.text
    r = await client.post(f"/v1/namespaces/{namespace}/buckets/{bucket}/uploads/{ticket['upload_id']}/confirm", headers=auth(api_key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_tenant_bucket_named_like_a_platform_bucket_is_its_own_folder_and_the_victims_archive_is_untouched(tmp_path):
    async with running(tmp_path) as (client, platform):
        victim = await push(client, "globex", hash_plugin(), "hash_embedder", version="1.0.0", key=ADMIN)
        assert victim.status_code == 200 and victim.json()["status"] == "REGISTERED", victim.text
        version = await platform.catalog.get("plugin_versions", victim.json()["plugin_id"])
        archive = version["archive"]
        before = await platform.store.get_bytes(archive["bucket"], archive["key"])
        attacker = await key_for(client, "acme")
        for bucket in (platform.settings.plugins_bucket, platform.settings.models_bucket, platform.settings.data_bucket):
            await upload(client, "acme", bucket, archive["key"], b"PK trojan", attacker)
            r = await client.post(f"/v1/namespaces/acme/buckets/{bucket}/uploads", json={"key": "../../globex/docs/x.txt"},
                                  headers=auth(attacker))
            assert_error(r, 422, "invalid_input")
        assert await platform.store.get_bytes(archive["bucket"], archive["key"]) == before
        source = await client.get(f"/v1/namespaces/globex/plugins/{victim.json()['plugin_id']}/source", headers=auth(ADMIN))
        assert source.status_code == 200 and source.content == before
        assert await platform.objects("acme").get_bytes(platform.settings.plugins_bucket, archive["key"]) == b"PK trojan"
        assert await platform.objects("globex").head("docs", "x.txt") is None


async def test_the_same_bucket_in_two_namespaces_never_collides_and_nothing_is_released(tmp_path):
    async with running(tmp_path) as (client, platform):
        acme, globex = await key_for(client, "acme"), await key_for(client, "globex")
        body = {"collection_name": "c1", "source": {"bucket": "docs", "prefix": ""},
                "feature_extractor": {"feature_extractor_name": "text_embedding"}}
        r = await client.post("/v1/namespaces/acme/collections", headers=auth(acme), json=body)
        assert r.status_code == 201, r.text
        await upload(client, "acme", "docs", "secret.txt", b"acme's secret", acme)
        # acme's last collection over the bucket goes; its objects stay, and stay acme's
        assert (await client.delete(f"/v1/namespaces/acme/collections/{r.json()['collection_id']}", headers=auth(acme))).status_code == 200
        r = await client.post("/v1/namespaces/globex/collections", headers=auth(globex), json=body)
        assert r.status_code == 201, r.text  # no 409, and nothing tells globex that acme uses the name
        confirmed = await upload(client, "globex", "docs", "secret.txt", b"globex's own", globex)
        assert confirmed["object"]["bucket"] == "docs" and confirmed["object"]["key"] == "secret.txt"
        assert await platform.objects("acme").get_bytes("docs", "secret.txt") == b"acme's secret"
        assert await platform.objects("globex").get_bytes("docs", "secret.txt") == b"globex's own"


async def test_the_drop_folder_writes_into_the_namespaces_own_folder(tmp_path):
    async with running(tmp_path) as (_, platform):
        root = tmp_path / "drop"
        target = root / "acme" / "sluice-plugins" / "globex" / "plugins" / "trojan.zip"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"PK")
        folder = DropFolder(root, platform.store, platform.catalog, platform.bus, platform.topics,
                            data_bucket=platform.settings.data_bucket, stable_s=0)
        await folder.poll(), await folder.poll()
        assert not target.exists()
        assert await platform.store.head(platform.settings.plugins_bucket, "globex/plugins/trojan.zip") is None
        assert await platform.objects("acme").get_bytes("sluice-plugins", "globex/plugins/trojan.zip") == b"PK"


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
