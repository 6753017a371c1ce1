"""Realtime deployments on a real local Ray Serve, through the REST app and the deploy function:
deploy → DEPLOYED → ingest → feature_search with the version that built the index; a failing new
version leaves the old one serving; tenants never collide; undeploy and delete."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fixtures.plugins import PLUGINS, zip_folder
from tests.integration.test_ingest import stack  # noqa: F401 - the fixture
from tests.integration.test_plugins_rest import ADMIN, auth, hash_plugin, push
from tests.integration.test_rest import assert_error

pytestmark = [pytest.mark.integration, pytest.mark.ray]

HASH_REALTIME = PLUGINS / "fixtures" / "hash_realtime"

FAILS_AT_START_UP = '''import os

from shared.plugins.inference.serve import BaseInferenceService


class InferenceService(BaseInferenceService):
    """Passes the dry run, then cannot start where it is served (as when its weights are missing
    in the serving environment)."""

    def __init__(self):
        super().__init__()
        if os.environ.get("SLUICE_SERVING"):
            raise RuntimeError("model weights /models/encoder.bin are missing")

    async def run_inference(self, inputs, parameters):
        return {"hash_embedding": [1.0] + [0.0] * 31}
'''


async def new_key(client, namespace: str) -> str:
    r = await client.post(f"/v1/namespaces/{namespace}/api-keys", json={"name": "ci"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def realtime_plugin(**edits: str | None) -> bytes:
    return zip_folder(HASH_REALTIME, top="hash_realtime", edits=edits)


async def pushed(client, archive: bytes, name: str, version: str, namespace: str = "acme", key: str = ADMIN) -> dict:
    r = await push(client, namespace, archive, name, version=version, key=key)
    assert r.status_code == 200 and r.json()["status"] == "REGISTERED", r.text
    return r.json()


async def deploy(client, plugin_id: str, namespace: str = "acme", key: str = ADMIN, timeout: float = 120) -> dict:
    r = await client.post(f"/v1/namespaces/{namespace}/plugins/{plugin_id}/deploy", headers=auth(key))
    assert r.status_code == 202, r.text
    return await settled(client, plugin_id, namespace, key, timeout)


async def settled(client, plugin_id: str, namespace: str = "acme", key: str = ADMIN, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await client.get(f"/v1/namespaces/{namespace}/plugins/{plugin_id}/status", headers=auth(key))).json()
        if status["status"] in ("DEPLOYED", "FAILED", "NOT_DEPLOYED"):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"deployment of {plugin_id} did not settle in {timeout}s: {status}")


async def realtime(client, plugin_id: str, text: str, namespace: str = "acme", key: str = ADMIN):
    return await client.post(f"/v1/namespaces/{namespace}/plugins/{plugin_id}/realtime",
                             json={"inputs": {"text": text}, "parameters": {}}, headers=auth(key))


async def feature_search(client, collection_id: str, query: dict, namespace: str = "acme", key: str = ADMIN, **extra):
    return await client.post(f"/v1/namespaces/{namespace}/retrievers/feature_search",
                             json={"collection_id": collection_id, "query": query, **extra}, headers=auth(key))


def deployment_events(stack, plugin_id: str) -> list[str]:
    return [e.payload.status for e in stack.events if e.type == "PluginDeploymentChanged" and e.payload.plugin_id == plugin_id]


@pytest.fixture
async def events(stack):
    """Collect the plugin topic too (the stack collects ingest events)."""
    consumer = await stack.platform.bus.subscribe([stack.platform.topics.deployments], group_id="realtime-test", from_beginning=True)
    from events import codec

    async def collect():
        while True:
            for message in await consumer.fetch(timeout_s=0.5):
                stack.events.append(codec.decode(message.value))

    task = asyncio.create_task(collect())
    yield stack
    task.cancel()
    await consumer.close()


async def test_deploy_then_ingest_then_feature_search_uses_the_deployed_version(events):
    stack = events
    client = stack.client
    plugin = await pushed(client, realtime_plugin(), "hash_realtime", "1.0.0")
    status = await deploy(client, plugin["plugin_id"])
    assert status["status"] == "DEPLOYED", status
    assert status["mode"] == "realtime" and status["plan"]["min_replicas"] == 1
    # every change was an event, in order
    deadline = time.monotonic() + 10
    while deployment_events(stack, plugin["plugin_id"])[-1:] != ["DEPLOYED"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert deployment_events(stack, plugin["plugin_id"]) == ["QUEUED", "PENDING", "IN_PROGRESS", "DEPLOYED"]

    r = await realtime(client, plugin["plugin_id"], "rivers and sluices")
    assert r.status_code == 200, r.text
    assert len(r.json()["outputs"]["hash_embedding"]) == 32

    collection = await stack.collection("docs", "docs-bucket", "hash_realtime")
    assert collection["deployment_status"] == "DEPLOYED"  # already serving: the request is a no-op
    texts = {
        "a.txt": "salmon swim upstream through the fish ladder",
        "b.txt": "the sluice gate controls the canal water level",
        "c.txt": "granite quarries supplied the cathedral stone",
    }
    for key, text in texts.items():
        await stack.put("docs-bucket", key, text.encode())
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 3, done.payload

    for query, expected in [("sluice gate water", "b.txt"), ("salmon ladder", "a.txt"), ("cathedral granite stone", "c.txt")]:
        r = await feature_search(client, collection["collection_id"], {"text": query}, limit=3)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["source"]["key"] == expected, (query, body["results"])
        assert body["feature_uri"] == "sluice://hash_realtime@1.0.0/hash_embedding"
        assert body["results"][0]["text"] == texts[expected]
        assert [h["rank"] for h in body["results"]] == [1, 2, 3]

    # a vector query skips the plugin; filters narrow the payload
    vector = (await realtime(client, plugin["plugin_id"], "canal water")).json()["outputs"]["hash_embedding"]
    r = await feature_search(client, collection["collection_id"], {"vector": vector}, limit=3, filters={"key": "c.txt"})
    assert r.status_code == 200, r.text
    assert [h["source"]["key"] for h in r.json()["results"]] == ["c.txt"]
    # concurrent queries are batched in the replica and each gets its own answer
    queries = [("sluice gate water", "b.txt"), ("salmon ladder", "a.txt"), ("cathedral granite stone", "c.txt")] * 6
    answers = await asyncio.gather(*[feature_search(client, collection["collection_id"], {"text": q}, limit=1) for q, _ in queries])
    assert [a.json()["results"][0]["source"]["key"] for a in answers] == [k for _, k in queries]

    # bad queries are named
    err = assert_error(await feature_search(client, collection["collection_id"], {"vector": [1.0, 2.0]}), 422, "invalid_input")
    assert "32" in err["message"]
    err = assert_error(await feature_search(client, collection["collection_id"], {"text": "x"},
                                            feature_uri="sluice://hash_realtime@2.0.0/hash_embedding"), 422, "invalid_input")
    assert "never another" in err["message"]
    assert_error(await feature_search(client, collection["collection_id"], {"text": "x"}, filters={"colour": "red"}), 422, "invalid_input")


async def test_a_new_version_that_fails_at_start_up_leaves_the_old_one_serving(events):
    stack = events
    client = stack.client
    v1 = await pushed(client, realtime_plugin(), "hash_realtime", "1.0.0")
    assert (await deploy(client, v1["plugin_id"]))["status"] == "DEPLOYED"
    v2 = await pushed(client, realtime_plugin(**{"realtime.py": FAILS_AT_START_UP}), "hash_realtime", "2.0.0")
    failed = await deploy(client, v2["plugin_id"])
    assert failed["status"] == "FAILED", failed
    assert failed["error"].startswith("RuntimeError: model weights /models/encoder.bin are missing"), failed["error"]
    assert "realtime.py" in failed["error"]  # the last log lines point into the plugin
    assert deployment_events(stack, v2["plugin_id"])[-1] == "FAILED"

    r = await realtime(client, v1["plugin_id"], "still here")
    assert r.status_code == 200 and len(r.json()["outputs"]["hash_embedding"]) == 32
    by_name = await realtime(client, "hash_realtime", "still here")
    assert by_name.status_code == 200 and by_name.json()["version"] == "1.0.0"  # the name still serves 1.0.0
    err = assert_error(await realtime(client, v2["plugin_id"], "x"), 409, "conflict")
    assert "FAILED" in err["message"] and "model weights" in err["message"]

    # a healthy 3.0.0 takes the name's traffic once it is deployed; 1.0.0 keeps answering by id
    v3 = await pushed(client, realtime_plugin(), "hash_realtime", "3.0.0")
    assert (await deploy(client, v3["plugin_id"]))["status"] == "DEPLOYED"
    assert (await realtime(client, "hash_realtime", "x")).json()["version"] == "3.0.0"
    assert (await realtime(client, v1["plugin_id"], "x")).status_code == 200

    # undeploy removes the endpoint and keeps the archive; the name falls back to 1.0.0
    r = await client.post(f"/v1/namespaces/acme/plugins/{v3['plugin_id']}/undeploy", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["status"] == "NOT_DEPLOYED" and r.json()["deployment_removed"] is True, r.text
    assert_error(await realtime(client, v3["plugin_id"], "x"), 409, "conflict")
    assert (await realtime(client, "hash_realtime", "x")).json()["version"] == "1.0.0"
    assert (await client.get(f"/v1/namespaces/acme/plugins/{v3['plugin_id']}/source", headers=auth(ADMIN))).status_code == 200

    # delete removes everything
    r = await client.delete(f"/v1/namespaces/acme/plugins/{v1['plugin_id']}", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["deployment_removed"] is True, r.text
    assert_error(await realtime(client, "hash_realtime", "x"), 404, "not_found")


async def test_two_namespaces_deploy_the_same_plugin_name_without_colliding(events):
    stack = events
    client = stack.client
    r = await client.post("/v1/namespaces", json={"namespace_name": "globex"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    acme_key, globex_key = await new_key(client, "acme"), await new_key(client, "globex")
    a = await pushed(client, realtime_plugin(), "hash_realtime", "1.0.0", "acme", acme_key)
    g = await pushed(client, realtime_plugin(**{"processors/hashing.py": (HASH_REALTIME / "processors" / "hashing.py")
                                                .read_text().replace("word.encode()", "word.upper().encode()")}),
                     "hash_realtime", "1.0.0", "globex", globex_key)
    assert a["plugin_id"] != g["plugin_id"]
    assert (await deploy(client, a["plugin_id"], "acme", acme_key))["status"] == "DEPLOYED"
    assert (await deploy(client, g["plugin_id"], "globex", globex_key))["status"] == "DEPLOYED"
    va = (await realtime(client, a["plugin_id"], "river delta", "acme", acme_key)).json()["outputs"]["hash_embedding"]
    vg = (await realtime(client, g["plugin_id"], "river delta", "globex", globex_key)).json()["outputs"]["hash_embedding"]
    assert va != vg  # each namespace's own code answers

    # neither can reach the other's plugin or collection
    assert_error(await realtime(client, g["plugin_id"], "x", "acme", acme_key), 404, "not_found")
    assert_error(await realtime(client, g["plugin_id"], "x", "globex", acme_key), 403, "forbidden")
    r = await client.post("/v1/namespaces/globex/collections", headers=auth(globex_key), json={
        "collection_name": "secret", "source": {"bucket": "globex-bucket"},
        "feature_extractor": {"feature_extractor_name": "hash_realtime"}})
    assert r.status_code == 201, r.text
    theirs = r.json()["collection_id"]
    assert_error(await feature_search(client, theirs, {"text": "x"}, "acme", acme_key), 404, "not_found")
    assert_error(await feature_search(client, theirs, {"text": "x"}, "globex", acme_key), 403, "forbidden")
    r = await feature_search(client, theirs, {"text": "x"}, "globex", globex_key)
    assert r.status_code == 200 and r.json()["results"] == [], r.text


async def test_a_plugin_without_realtime_py_serves_queries_through_its_own_steps(events):
    stack = events
    client = stack.client
    plugin = await pushed(client, hash_plugin(), "hash_embedder", "1.0.0")
    status = await deploy(client, plugin["plugin_id"])
    assert status["status"] == "DEPLOYED" and status["mode"] == "generic", status
    r = await realtime(client, plugin["plugin_id"], "rivers")
    assert r.status_code == 200 and len(r.json()["outputs"]["embedding"]) == 32, r.text

    no_features = hash_plugin(**{"manifest.py": (PLUGINS / "fixtures" / "hash_embedder" / "manifest.py").read_text()
                                 .replace('"feature_name": "hash_embedding"', '"feature_name": "unused"')
                                 .replace("features = [", "features = []\n_unused = [")})
    # a version that cannot embed a query is batch-only
    batch_only = await pushed(client, no_features, "hash_embedder", "1.1.0")
    status = await deploy(client, batch_only["plugin_id"])
    assert status["status"] == "NOT_DEPLOYED" and "batch-only" in status["reason"], status
