"""Collections through REST: the vector index comes from the plugin version's manifest, one per
collection; buckets belong to one namespace; counts come from the stores."""

from __future__ import annotations

import pytest

from tests.fixtures.plugins import HASH_EMBEDDER
from tests.integration.test_plugins_rest import ADMIN, auth, client, hash_plugin, key_for, push  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def body(name: str = "reports", bucket: str = "docs", version: str | None = None, **parameters) -> dict:
    return {
        "collection_name": name, "source": {"bucket": bucket, "prefix": "reports/"},
        "feature_extractor": {"feature_extractor_name": "hash_embedder", "version": version, "parameters": parameters},
    }


async def test_a_collection_gets_its_vector_index_from_the_plugin_manifest(client):
    assert (await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
    r = await client.post("/v1/namespaces/acme/collections", json=body(), headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["vector_indexes"] == [
        {"name": "hash_embedding", "dimensions": 32, "distance": "cosine", "feature_uri": "sluice://hash_embedder@1.0.0/hash_embedding"}
    ]
    assert created["feature_extractor"]["version"] == "1.0.0" and created["feature_extractor"]["parameters"] == {"dim": 32}
    got = (await client.get(f"/v1/namespaces/acme/collections/{created['collection_id']}", headers=auth(ADMIN))).json()
    assert got["document_count"] == 0 and got["vector_indexes"][0]["vector_count"] == 0


async def test_the_active_version_is_pinned_and_a_new_version_gets_its_own_index(client):
    await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    first = (await client.post("/v1/namespaces/acme/collections", json=body("a"), headers=auth(ADMIN))).json()
    manifest = (HASH_EMBEDDER / "manifest.py").read_text().replace('"embedding_dim": 32', '"embedding_dim": 16').replace(
        "default=32", "default=16")
    assert (await push(client, "acme", hash_plugin(**{"manifest.py": manifest}), "hash_embedder", version="2.0.0")).status_code == 200
    second = (await client.post("/v1/namespaces/acme/collections", json=body("b"), headers=auth(ADMIN))).json()
    assert first["feature_extractor"]["version"] == "1.0.0" and second["feature_extractor"]["version"] == "2.0.0"
    assert [v["dimensions"] for v in (first["vector_indexes"] + second["vector_indexes"])] == [32, 16]
    again = (await client.get(f"/v1/namespaces/acme/collections/{first['collection_id']}", headers=auth(ADMIN))).json()
    assert again["vector_indexes"][0]["dimensions"] == 32  # untouched by the new version


async def test_unknown_parameters_and_plugins_are_refused_by_name(client):
    await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    r = await client.post("/v1/namespaces/acme/collections", json=body(dims=8), headers=auth(ADMIN))
    assert r.status_code == 422 and "no parameter 'dims'; did you mean 'dim'?" in r.json()["error"]["message"]
    r = await client.post("/v1/namespaces/acme/collections", json={**body(), "feature_extractor": {"feature_extractor_name": "nope"}},
                          headers=auth(ADMIN))
    assert r.status_code == 404


async def test_buckets_are_the_namespaces_own_and_collection_names_are_unique(client):
    acme, globex = await key_for(client, "acme"), await key_for(client, "globex")
    await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0", key=acme)
    await push(client, "globex", hash_plugin(), "hash_embedder", version="1.0.0", key=globex)
    created = await client.post("/v1/namespaces/acme/collections", json=body(), headers=auth(acme))
    assert created.status_code == 201
    assert (await client.post("/v1/namespaces/acme/collections", json=body(), headers=auth(acme))).status_code == 409
    theirs = await client.post("/v1/namespaces/globex/collections", json=body(bucket="docs"), headers=auth(globex))
    assert theirs.status_code == 201, theirs.text  # globex's own `docs`: nothing says acme has one too
    collection_id = created.json()["collection_id"]
    assert (await client.get(f"/v1/namespaces/globex/collections/{collection_id}", headers=auth(globex))).status_code == 404
    listed = (await client.get("/v1/namespaces/globex/collections", headers=auth(globex))).json()["collections"]
    assert [c["collection_id"] for c in listed] == [theirs.json()["collection_id"]]


async def test_an_object_upload_confirmed_once_publishes_one_object_created(client):
    from events import decode

    platform = client._transport.app.state.platform
    consumer = await platform.bus.subscribe([platform.topics.objects], group_id="objects-test", from_beginning=True)
    try:
        r = await client.post("/v1/namespaces/acme/buckets/docs/uploads", json={"key": "reports/q1.txt", "content_type": "text/plain"},
                              headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        ticket = r.json()
        early = await client.post(ticket["confirm_url"], headers=auth(ADMIN))
        assert early.status_code == 409
        put = await client.put(ticket["presigned_url"], content=b"quarterly numbers", headers=ticket["upload_headers"])
        assert put.status_code in (200, 204), put.text
        for _ in range(2):
            r = await client.post(ticket["confirm_url"], headers=auth(ADMIN))
            assert r.status_code == 200 and r.json()["object"]["size"] == 17
        messages = await consumer.fetch(timeout_s=1.0)
    finally:
        await consumer.close()
    [event] = [decode(m.value) for m in messages]
    assert event.namespace == "acme" and event.payload.key == "reports/q1.txt" and event.payload.source == "upload"
    # globex's `docs` is another folder: its upload works and acme's object is not in it
    globex = await key_for(client, "globex")
    r = await client.post("/v1/namespaces/globex/buckets/docs/uploads", json={"key": "reports/q1.txt"}, headers=auth(globex))
    assert r.status_code == 201 and "/globex/docs/reports/q1.txt" in r.json()["presigned_url"]
    assert await platform.objects("globex").head("docs", "reports/q1.txt") is None
    r = await client.post("/v1/namespaces/acme/buckets/docs/uploads", json={"key": "../x.txt"}, headers=auth(ADMIN))
    assert r.status_code == 422


async def test_a_refused_object_upload_records_nothing(client):
    transport_app = client._transport.app  # the ASGI app: its platform holds the catalog
    catalog = transport_app.state.platform.catalog
    r = await client.post("/v1/namespaces/acme/buckets/do..cs/uploads", json={"key": "a.txt"}, headers=auth(ADMIN))
    assert r.status_code == 422 and "invalid bucket name" in r.json()["error"]["message"]
    assert await catalog.count("buckets") == 0
    for key, problem in (("a\\b.txt", "backslash"), ("x" * 300 + "/a", "longer than 255"), ("a//b", "empty segment")):
        r = await client.post("/v1/namespaces/acme/buckets/docs-bucket/uploads", json={"key": key}, headers=auth(ADMIN))
        assert r.status_code == 422 and problem in r.json()["error"]["message"], r.text
    assert await catalog.count("object_uploads") == 0
