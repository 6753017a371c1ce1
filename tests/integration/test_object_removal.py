"""Never lose an object, over the REST app with real ingest (a local Ray, the hash embedder): a
removed object leaves search over each route it can be removed by, and a collection created over a
bucket that already holds objects ingests them all (and `reingest` runs them again).

Routes of removal covered here: REST `DELETE .../objects/{key}`, a raw S3 `ObjectRemoved`
notification through the notifications function, and a drop-folder marker
(`drop/{namespace}/{bucket}/.delete/{key}`).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from functions.runtime.dropfolder import DropFolder
from tests.integration.test_ingest import Stack, running_stack
from tests.integration.test_plugins_rest import ADMIN, auth, hash_plugin, push

pytestmark = [pytest.mark.integration, pytest.mark.ray]

EVENTS = Path(__file__).resolve().parents[1] / "events"


@pytest.fixture
async def stack(tmp_path, ray_cluster):
    async with running_stack(tmp_path) as stack:
        yield stack


async def until(check, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


async def search_keys(stack: Stack, collection_id: str, query: str) -> list[str]:
    r = await stack.client.post(f"/v1/namespaces/acme/collections/{collection_id}/search", json={"query": query, "limit": 10},
                                headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    return [hit["source"]["key"] for hit in r.json()["results"]]


def s3_removal(data_bucket: str, namespace: str, bucket: str, key: str) -> bytes:
    """The recorded S3 `ObjectRemoved:Delete` notification, for an object of `namespace`'s `bucket`
    (tenants' objects live in the data bucket under `{namespace}/{bucket}/`)."""
    raw = json.loads((EVENTS / "s3_object_removed_delete.json").read_bytes())
    [record] = raw["Records"]
    record["s3"]["bucket"]["name"] = data_bucket
    record["s3"]["object"]["key"] = f"{namespace}/{bucket}/{key}"
    return json.dumps(raw).encode()


async def test_deleting_an_object_over_each_route_removes_it_from_search(stack):
    assert (await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
    collection_id = (await stack.collection("notes", "notes-bucket", "hash_embedder"))["collection_id"]
    texts = {"rest.txt": "a heron stands in the sluice gate", "s3.txt": "barges wait below the weir at dawn",
             "kept.txt": "the lock keeper writes down every boat", "drop.txt": "eels slip through the fish ladder at night"}
    for key, text in texts.items():
        await stack.put("notes-bucket", key, text.encode())
    await until(lambda: _counts_are(stack, collection_id, (4, 4)), what="four objects ingested")
    assert (await search_keys(stack, collection_id, texts["rest.txt"]))[0] == "rest.txt"

    # REST: the object goes from the store at once, its documents and points once `remove` ran
    url = "/v1/namespaces/acme/buckets/notes-bucket/objects/rest.txt"
    r = await stack.client.delete(url, headers=auth(ADMIN))
    assert r.status_code == 202, r.text
    event_id = r.json()["event_id"]
    purged = await stack.wait_for(lambda e: e.type == "ObjectPurged" and e.causation_id == event_id)
    assert purged.payload.key == "rest.txt" and purged.payload.collections == [collection_id]
    assert purged.payload.documents_deleted == 1 and purged.payload.vectors_deleted == {collection_id: 1}
    assert await stack.platform.objects("acme").head("notes-bucket", "rest.txt") is None
    assert await stack.counts(collection_id) == (3, 3)
    assert "rest.txt" not in await search_keys(stack, collection_id, texts["rest.txt"])
    again = await stack.client.delete(url, headers=auth(ADMIN))
    assert again.status_code == 404 and again.json()["error"]["type"], again.text

    # S3 / MinIO: the store removed the object and says so on the notifications topic
    await stack.platform.objects("acme").delete("notes-bucket", "s3.txt")
    raw = s3_removal(stack.platform.settings.data_bucket, "acme", "notes-bucket", "s3.txt")
    await stack.platform.bus.publish(stack.platform.topics.s3_notifications, raw)
    purged = await stack.wait_for(lambda e: e.type == "ObjectPurged" and e.payload.key == "s3.txt")
    assert purged.payload.documents_deleted == 1 and purged.payload.vectors_deleted == {collection_id: 1}
    assert await stack.counts(collection_id) == (2, 2)
    assert "s3.txt" not in await search_keys(stack, collection_id, texts["s3.txt"])

    # the drop folder: a marker under `.delete/` deletes the object and announces it (through the outbox)
    root = stack.platform.settings.data_dir / "drop-test"
    folder = DropFolder.for_platform(stack.platform, root)
    folder.stable_s, folder.check_writers = 0, False
    marker = root / "acme" / "notes-bucket" / ".delete" / "drop.txt"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"")
    await folder.poll()
    assert not marker.exists()
    purged = await stack.wait_for(lambda e: e.type == "ObjectPurged" and e.payload.key == "drop.txt")
    assert purged.payload.documents_deleted == 1 and purged.payload.vectors_deleted == {collection_id: 1}
    assert await stack.platform.objects("acme").head("notes-bucket", "drop.txt") is None
    assert await stack.counts(collection_id) == (1, 1)
    assert await search_keys(stack, collection_id, texts["drop.txt"]) == ["kept.txt"]
    assert await stack.platform.catalog.count("ingested_objects", {"collection_id": collection_id}) == 1


async def _counts_are(stack: Stack, collection_id: str, expected: tuple[int, int]) -> bool:
    return await stack.counts(collection_id) == expected


async def test_a_collection_created_over_a_bucket_of_existing_objects_ends_with_them_all_ingested_and_reingest_runs_again(stack):
    assert (await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
    keys = [f"old/{i}.txt" for i in range(6)]
    for i, key in enumerate(keys):
        await stack.put("archive", key, f"archived note {i} on water levels".encode())
    await stack.put("archive", "elsewhere/skip.txt", b"outside the collection's prefix")
    assert await stack.platform.catalog.count("ingest_queue") == 0  # no collection took them when they arrived

    created = await stack.collection("archive", "archive", "hash_embedder", prefix="old/")
    collection_id, backfill = created["collection_id"], created["backfill"]
    assert backfill["status"] == "QUEUED" and backfill["force"] is False
    await until(lambda: _counts_are(stack, collection_id, (6, 6)), what="the six objects ingested")
    first = [e for e in stack.events if e.type == "IngestCompleted" and e.payload.collection_id == collection_id]
    assert sum(e.payload.objects for e in first) == 6  # in one task, or more if an upload's own event came in between
    status = (await stack.client.get(urlsplit(backfill["status_url"]).path, headers=auth(ADMIN))).json()
    assert status["status"] == "COMPLETED" and status["trigger"] == "created", status
    assert (status["objects_listed"], status["objects_queued"], status["objects_skipped"]) == (6, 6, 0)
    assert (await search_keys(stack, collection_id, "archived note 4 on water levels"))[0] == "old/4.txt"

    r = await stack.client.post(f"/v1/namespaces/acme/collections/{collection_id}/reingest", headers=auth(ADMIN))
    assert r.status_code == 202 and r.json()["force"] is True, r.text
    again = await stack.finished(collection_id, after=len(first))
    assert again.type == "IngestCompleted" and again.payload.objects == 6 and again.payload.documents_written == 6, again.payload
    assert await stack.counts(collection_id) == (6, 6)  # run again over the same ids: replaced, not added
    status = (await stack.client.get(urlsplit(r.json()["status_url"]).path, headers=auth(ADMIN))).json()
    assert status["status"] == "COMPLETED" and status["trigger"] == "reingest"
    assert (status["objects_listed"], status["objects_queued"], status["skipped_already_ingested"]) == (6, 6, 0)
