"""Ingest over the embedded stack with a real local Ray: objects in a bucket → the ingest function
→ a Ray Data job → documents in the catalog and points in the vector index, with completion
events whose counts are what the stores acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import codec
from functions.rest.app import create_app
from functions.runtime.scheduler import IngestScheduler
from infra.bootstrap import bootstrap
from infra.settings import Settings
from infra.vectors.base import VectorSpec
from tests.fixtures.functions import running_functions
from tests.integration.test_plugins_rest import ADMIN, auth, hash_plugin, push

pytestmark = [pytest.mark.integration, pytest.mark.ray]

def hash_embedder_that(trigger: str, action: str, *, imports: str = "") -> str:
    """processors/hashing.py of the hash embedder, doing `action` for a text holding `trigger`."""
    return f'''import hashlib
import math
{imports}
import pandas as pd


class HashEmbedder:
    def __init__(self, config, **kwargs):
        self.dim = config["dim"]

    def embed(self, text):
        if {trigger!r} in text:
            {action}
        vector = [0.0] * self.dim
        for word in text.lower().split():
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def __call__(self, batch):
        batch["hash_embedding"] = [self.embed(t) for t in batch["data"].fillna("")]
        return batch
'''


RAISING_EMBEDDER = hash_embedder_that("BOOM", 'raise ValueError("this text cannot be embedded")')


class Stack:
    def __init__(self, platform, client: httpx.AsyncClient, scheduler: IngestScheduler) -> None:
        self.platform = platform
        self.client = client
        self.scheduler = scheduler
        self.events: list = []

    async def collect(self) -> None:
        consumer = await self.platform.bus.subscribe([self.platform.topics.ingest], group_id="ingest-test", from_beginning=True)
        try:
            while True:
                for message in await consumer.fetch(timeout_s=0.5):
                    self.events.append(codec.decode(message.value))
        finally:
            await consumer.close()

    async def wait_for(self, predicate, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.1)
        raise AssertionError(f"no matching event within {timeout}s; saw {[(e.type, e.payload) for e in self.events]}")

    async def finished(self, collection_id: str, after: int = 0, timeout: float = 180.0):
        """The first IngestCompleted/IngestFailed of the collection past the first `after` ones."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [e for e in self.events if e.type in ("IngestCompleted", "IngestFailed")
                    and e.payload.collection_id == collection_id]
            if len(done) > after:
                return done[after]
            await asyncio.sleep(0.1)
        raise AssertionError(f"no completion for {collection_id} within {timeout}s; saw {[(e.type, e.payload) for e in self.events]}")

    async def collection(self, name: str, bucket: str, plugin: str, *, namespace: str = "acme", **extra) -> dict:
        body = {"collection_name": name, "source": {"bucket": bucket, "prefix": extra.pop("prefix", "")},
                "feature_extractor": {"feature_extractor_name": plugin, **extra}}
        r = await self.client.post(f"/v1/namespaces/{namespace}/collections", json=body, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        return r.json()

    async def put(self, bucket: str, key: str, body: bytes, content_type: str = "text/plain", *,
                  namespace: str = "acme") -> dict:
        r = await self.client.post(f"/v1/namespaces/{namespace}/buckets/{bucket}/uploads",
                                   json={"key": key, "content_type": content_type}, headers=auth(ADMIN))
        assert r.status_code == 201, r.text
        ticket = r.json()
        put = await self.client.put(ticket["presigned_url"], content=body, headers=ticket["upload_headers"])
        assert put.status_code in (200, 204), put.text
        r = await self.client.post(f"/v1/namespaces/{namespace}/buckets/{bucket}/uploads/{ticket['upload_id']}/confirm",
                                   headers=auth(ADMIN))
        assert r.status_code in (200, 201), r.text
        return r.json()

    async def counts(self, collection_id: str) -> tuple[int, int]:
        r = await self.client.get(f"/v1/namespaces/acme/collections/{collection_id}", headers=auth(ADMIN))
        record = r.json()
        return record["document_count"], record["vector_indexes"][0]["vector_count"]


@contextlib.asynccontextmanager
async def running_stack(data_dir: Path, namespaces: tuple[str, ...] = ("acme",), **settings: Any):
    """The embedded platform on a real local Ray, REST in-process, with `namespaces` created and
    the ingest events collected. Uploads one after another join one task (a loaded 2-CPU runner
    can space them past the default settle time)."""
    config = Settings(data_dir=data_dir, bus="memory", compute="ray", admin_key=ADMIN,
                      **{"ingest_max_delay_s": 1.0, "ingest_settle_s": 1.0, **settings})
    async with bootstrap(config) as platform, running_functions(platform) as scheduler:
        transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=180) as client:
            for namespace in namespaces:
                r = await client.post("/v1/namespaces", json={"namespace_name": namespace}, headers=auth(ADMIN))
                assert r.status_code == 201, r.text
            stack = Stack(platform, client, scheduler)
            collecting = asyncio.create_task(stack.collect())
            try:
                yield stack
            finally:
                collecting.cancel()


@pytest.fixture
async def stack(tmp_path, ray_cluster):
    async with running_stack(tmp_path) as stack:
        yield stack


async def test_objects_are_ingested_and_the_counts_are_what_the_stores_hold(stack):
    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("notes", "notes-bucket", "hash_embedder")
    collection_id = collection["collection_id"]
    texts = {f"n/{i}.txt": f"note number {i} about rivers and sluices" for i in range(12)}
    for key, text in texts.items():
        await stack.put("notes-bucket", key, text.encode())
    done = await stack.finished(collection_id)
    assert done.type == "IngestCompleted", done.payload
    payload = done.payload
    assert payload.status == "COMPLETED" and payload.objects == 12 and payload.rows_failed == 0
    assert payload.documents_written == 12
    assert payload.vectors_upserted == {"hash_embedding": 12}
    assert await stack.counts(collection_id) == (12, 12)
    started = await stack.wait_for(lambda e: e.type == "IngestStarted" and e.payload.task_id == payload.task_id)
    assert started.payload.objects == 12
    progress = await stack.wait_for(lambda e: e.type == "IngestProgress" and e.payload.task_id == payload.task_id)
    assert progress.payload.rows_total == 12 and 0 < progress.payload.rows_done <= 12

    task = (await stack.client.get(f"/v1/namespaces/acme/tasks/{payload.task_id}", headers=auth(ADMIN))).json()
    assert task["status"] == "COMPLETED" and task["documents_written"] == 12 and task["vectors_upserted"] == {"hash_embedding": 12}
    listed = (await stack.client.get("/v1/namespaces/acme/tasks", params={"collection_id": collection_id}, headers=auth(ADMIN))).json()
    assert [t["task_id"] for t in listed["tasks"]] == [payload.task_id]

    docs = await stack.platform.catalog.find("documents", {"collection_id": collection_id})
    doc = next(d for d in docs if d["source"]["key"] == "n/3.txt")
    assert doc["text"] == texts["n/3.txt"]
    assert doc["feature_uris"] == ["sluice://hash_embedder@1.0.0/hash_embedding"]
    assert doc["lineage"]["task_id"] == payload.task_id and doc["lineage"]["plugin_version"] == "1.0.0"

    # the same ObjectCreated again (a redelivery): nothing new is written
    objects = [e for e in await _objects(stack) if e.payload.key == "n/3.txt"]
    await stack.platform.bus.publish(stack.platform.topics.objects, codec.encode(objects[0]))
    await asyncio.sleep(1.5)
    await stack.scheduler.drain(60)
    assert await stack.counts(collection_id) == (12, 12)

    # a new version of one object replaces its documents and points, never adds to them
    await stack.put("notes-bucket", "n/3.txt", b"the third note, rewritten")
    second = await stack.finished(collection_id, after=1)
    assert second.type == "IngestCompleted" and second.payload.documents_written == 1
    assert await stack.counts(collection_id) == (12, 12)
    [doc] = await stack.platform.catalog.find("documents", {"collection_id": collection_id, "source.key": "n/3.txt"})
    assert doc["text"] == "the third note, rewritten"

    # search embeds the query with the same plugin version
    r = await stack.client.post(f"/v1/namespaces/acme/collections/{collection_id}/search",
                                json={"query": "the third note, rewritten", "limit": 3}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["source"]["key"] == "n/3.txt" and top["score"] > 0.99


async def _objects(stack):
    consumer = await stack.platform.bus.subscribe([stack.platform.topics.objects], group_id=f"peek-{time.time()}", from_beginning=True)
    try:
        return [codec.decode(m.value) for m in await consumer.fetch(max_records=1000, timeout_s=1.0)]
    finally:
        await consumer.close()


async def test_a_row_that_raises_is_reported_and_the_others_are_written(stack):
    archive = hash_plugin(**{"processors/hashing.py": RAISING_EMBEDDER})
    r = await push(stack.client, "acme", archive, "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("mixed", "mixed-bucket", "hash_embedder")
    for i in range(6):
        await stack.put("mixed-bucket", f"ok-{i}.txt", f"a fine text {i}".encode())
    await stack.put("mixed-bucket", "bad.txt", b"this one goes BOOM")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted", done.payload
    payload = done.payload
    assert payload.status == "COMPLETED_WITH_ERRORS"
    assert payload.documents_written == 6 and payload.vectors_upserted == {"hash_embedding": 6}
    assert payload.rows_failed == 1
    [failure] = payload.failures
    assert "cannot be embedded" in failure.error and failure.step
    bad = [d for d in await stack.platform.catalog.find("ingested_objects", {"key": "bad.txt"})]
    assert failure.object_id == bad[0]["object_id"] and bad[0]["status"] == "failed"
    assert await stack.counts(collection["collection_id"]) == (6, 6)


async def test_a_vector_the_index_lacks_fails_before_the_job_runs(stack):
    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("broken", "broken-bucket", "hash_embedder")
    record = await stack.platform.catalog.get("collections", collection["collection_id"])
    index = record["index_name"]
    await stack.platform.vectors.delete_collection(index)
    await stack.platform.vectors.create_collection(index, {"other_vector": VectorSpec(size=32)})
    await stack.put("broken-bucket", "a.txt", b"some text")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestFailed"
    assert "'hash_embedding'" in done.payload.reason and "lacks" in done.payload.reason and "other_vector" in done.payload.reason
    assert not [e for e in stack.events if e.type == "IngestStarted"], "the job must not start"
    task = (await stack.client.get(f"/v1/namespaces/acme/tasks/{done.payload.task_id}", headers=auth(ADMIN))).json()
    assert task["status"] == "FAILED" and task["reason"] == done.payload.reason


async def test_nothing_written_for_non_empty_input_is_a_failure_not_a_completion(stack):
    archive = hash_plugin(**{"processors/hashing.py": RAISING_EMBEDDER})
    r = await push(stack.client, "acme", archive, "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("doomed", "doomed-bucket", "hash_embedder")
    await stack.put("doomed-bucket", "x.txt", b"BOOM BOOM")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestFailed"
    assert "nothing was written" in done.payload.reason and "cannot be embedded" in done.payload.reason
    assert len(done.payload.failures) == 1


@pytest.mark.torch
async def test_builtin_text_embedding_chunks_and_counts(stack):
    collection = await stack.collection("docs", "docs-bucket", "text_embedding",
                                        parameters={"chunk_size": 200, "chunk_overlap": 20})
    assert collection["vector_indexes"][0]["dimensions"] == 384
    paragraph = "Sluice gates control the flow of water in a canal. " * 12
    await stack.put("docs-bucket", "long.txt", paragraph.encode())
    await stack.put("docs-bucket", "short.md", b"# Title\n\nA short markdown note about locks.", content_type="text/markdown")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted", done.payload
    docs = await stack.platform.catalog.find("documents", {"collection_id": collection["collection_id"]})
    chunks = [d for d in docs if d["source"]["key"] == "long.txt"]
    assert len(chunks) == chunks[0]["fields"]["chunk_count"] > 1
    assert done.payload.documents_written == len(docs) == len(chunks) + 1
    assert done.payload.vectors_upserted == {"text_embedding": len(docs)}
    assert await stack.counts(collection["collection_id"]) == (len(docs), len(docs))
    r = await stack.client.post(f"/v1/namespaces/acme/collections/{collection['collection_id']}/search",
                                json={"query": "markdown note about locks", "limit": 2}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["source"]["key"] == "short.md"
    listed = (await stack.client.get("/v1/namespaces/acme/plugins", headers=auth(ADMIN))).json()
    assert "text_embedding" in json.dumps(listed)


GPU_PIPELINE = '''from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import HashParams, metadata
from .processors.hashing import HashEmbedder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = HashParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(name="embed", service_class=HashEmbedder, resource_type=ResourceType.GPU, config={"dim": params.dim})],
    )
    return {"steps": build_pipeline_steps(pipeline)}
'''


async def test_a_gpu_step_runs_on_cpu_with_a_warning_and_fails_when_gpus_are_required(stack):
    r = await push(stack.client, "acme", hash_plugin(**{"pipeline.py": GPU_PIPELINE}), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("gpu", "gpu-bucket", "hash_embedder")
    await stack.put("gpu-bucket", "a.txt", b"water over the weir")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 1, done.payload
    task = (await stack.client.get(f"/v1/namespaces/acme/tasks/{done.payload.task_id}", headers=auth(ADMIN))).json()
    assert task["warnings"] == ["step 'embed' needs 1 GPUs, cluster has 0: running it on CPU"]

    stack.scheduler.settings = stack.scheduler.settings.model_copy(update={"require_gpu": True})
    await stack.put("gpu-bucket", "b.txt", b"a second text")
    failed = await stack.finished(collection["collection_id"], after=1)
    assert failed.type == "IngestFailed"
    assert failed.payload.reason == "step 'embed' needs 1 GPUs, cluster has 0 (SLUICE_REQUIRE_GPU is set)"


async def test_a_task_whose_process_died_is_run_again_and_overwrites(stack):
    import socket
    import subprocess

    from events.payloads import ObjectCreated

    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("resume", "resume-bucket", "hash_embedder")
    collection_id = collection["collection_id"]
    catalog, store = stack.platform.catalog, stack.platform.objects("acme")
    await store.ensure_bucket("resume-bucket")
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}:gone"
    entries = []
    for i in range(3):
        info = await store.put_bytes("resume-bucket", f"r{i}.txt", f"text number {i}".encode(), content_type="text/plain")
        obj = ObjectCreated(
            bucket="resume-bucket", key=f"r{i}.txt", size=info.size, etag=info.etag, content_type="text/plain", source="upload"
        )
        entries.append((f"{collection_id}|{obj.dedup_key}", {"namespace": "acme", "collection_id": collection_id,
                        "object": obj.model_dump(mode="json"), "correlation_id": "c", "queued_at": time.time(), "claimed_by": "tsk_dead"}))
    await catalog.upsert_many("ingest_queue", entries)
    await catalog.insert("tasks", "tsk_dead", {
        "task_id": "tsk_dead", "namespace": "acme", "collection_id": collection_id, "status": "RUNNING", "objects": 3,
        "owner": owner, "created_at": "2026-11-22T00:00:00+00:00", "documents_written": 0, "vectors_upserted": {},
        "rows_failed": 0, "rows_skipped": 0, "failures": [], "warnings": [], "reason": None, "rows_done": 0, "rows_total": 3,
    })
    await catalog.insert("ingest_leases", collection_id, {"collection_id": collection_id, "owner": owner, "task_id": "tsk_dead",
                                                          "expires_at": time.time() + 3600})
    stack.scheduler.poke()
    done = await stack.finished(collection_id)
    assert done.type == "IngestCompleted" and done.payload.task_id == "tsk_dead" and done.payload.documents_written == 3
    task = await catalog.get("tasks", "tsk_dead")
    assert task["status"] == "COMPLETED" and task["resumed"] == 1
    assert await catalog.get("ingest_leases", collection_id) is None and not await catalog.count("ingest_queue")
    assert await stack.counts(collection_id) == (3, 3)


async def test_a_transient_failure_runs_the_task_again_and_it_completes_with_its_attempts_counted(stack, monkeypatch):
    from events.errors import TransientError

    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("flaky", "flaky-bucket", "hash_embedder")
    collection_id = collection["collection_id"]
    monkeypatch.setattr(stack.platform.settings, "ingest_retry_base_s", 0.1)
    real_run_job, failures = stack.scheduler._run_job, []

    async def index_down_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise TransientError("vector index unreachable")
        return await real_run_job(*args, **kwargs)

    monkeypatch.setattr(stack.scheduler, "_run_job", index_down_once)
    for i in range(3):
        await stack.put("flaky-bucket", f"f{i}.txt", f"flaky text {i}".encode())
    done = await stack.finished(collection_id)
    assert done.type == "IngestCompleted" and done.payload.documents_written == 3, done.payload
    task = await stack.platform.catalog.get("tasks", done.payload.task_id)
    assert task["attempts"] == 2 and "vector index unreachable" in task["last_error"]
    assert [e.type for e in stack.events if getattr(e.payload, "task_id", None) == done.payload.task_id].count("IngestStarted") == 1
    assert await stack.counts(collection_id) == (3, 3)


async def test_a_failure_that_stays_transient_fails_the_task_after_its_attempts(stack, monkeypatch):
    from events.errors import TransientError

    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("down", "down-bucket", "hash_embedder")
    monkeypatch.setattr(stack.platform.settings, "ingest_retry_base_s", 0.05)

    async def index_down(*args, **kwargs):
        raise TransientError("vector index unreachable")

    monkeypatch.setattr(stack.scheduler, "_run_job", index_down)
    await stack.put("down-bucket", "d.txt", b"never written")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestFailed" and "failed 3 times" in done.payload.reason and "unreachable" in done.payload.reason
    assert (await stack.platform.catalog.get("tasks", done.payload.task_id))["status"] == "FAILED"
    assert not await stack.platform.catalog.count("ingest_queue", {"collection_id": collection["collection_id"]})


async def test_the_reconciler_requeues_claims_of_a_task_that_never_existed_and_they_are_ingested(stack):
    from events.payloads import ObjectCreated

    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("orphans", "orphan-bucket", "hash_embedder")
    collection_id = collection["collection_id"]
    store = stack.platform.objects("acme")
    await store.ensure_bucket("orphan-bucket")
    entries = []
    for i in range(2):  # claimed by a task whose insert a crash cut off (an older Sluice wrote these two apart)
        info = await store.put_bytes("orphan-bucket", f"o{i}.txt", f"orphan {i}".encode(), content_type="text/plain")
        obj = ObjectCreated(bucket="orphan-bucket", key=f"o{i}.txt", size=info.size, etag=info.etag, content_type="text/plain",
                            source="upload")
        entries.append((f"{collection_id}|{obj.dedup_key}", {"namespace": "acme", "collection_id": collection_id,
                        "object": obj.model_dump(mode="json"), "queued_at": time.time(), "claimed_by": "tsk_never",
                        "claimed_at": time.time() - 3600}))
    await stack.platform.catalog.upsert_many("ingest_queue", entries)
    fixed = await stack.scheduler.reconcile()
    assert fixed["unclaimed"] == 2
    done = await stack.finished(collection_id)
    assert done.type == "IngestCompleted" and done.payload.documents_written == 2
    assert await stack.counts(collection_id) == (2, 2)


async def test_the_sweep_ingests_objects_that_arrived_without_an_event_once_per_period(stack):
    r = await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("silent", "silent-bucket", "hash_embedder")
    collection_id = collection["collection_id"]
    store = stack.platform.objects("acme")
    await store.ensure_bucket("silent-bucket")
    for i in range(2):  # written behind Sluice's back: no notification, no confirm
        await store.put_bytes("silent-bucket", f"s{i}.txt", f"silent text {i}".encode(), content_type="text/plain")
    await stack.platform.catalog.delete("leases", "ingest-sweep")  # the period of the sweep at start is over
    assert await stack.scheduler.sweep() >= 1
    assert await stack.scheduler.sweep() == 0  # once per period, whichever process holds it
    done = await stack.finished(collection_id)
    assert done.type == "IngestCompleted" and done.payload.documents_written == 2, done.payload
    assert await stack.counts(collection_id) == (2, 2)


async def test_a_task_whose_process_keeps_dying_fails_naming_its_objects_instead_of_being_resumed_again(stack):
    import socket
    import subprocess

    from events.payloads import ObjectCreated

    collection = await stack.collection("doomed", "doomed-bucket", "text_embedding")
    collection_id = collection["collection_id"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}:gone"
    obj = ObjectCreated(bucket="doomed-bucket", key="d.txt", size=3, etag="e", content_type="text/plain", source="upload")
    await stack.platform.catalog.upsert("ingest_queue", f"{collection_id}|{obj.dedup_key}", {
        "namespace": "acme", "collection_id": collection_id, "object": obj.model_dump(mode="json"), "queued_at": time.time(),
        "claimed_by": "tsk_doomed"})
    await stack.platform.catalog.insert("tasks", "tsk_doomed", {
        "task_id": "tsk_doomed", "namespace": "acme", "collection_id": collection_id, "status": "RUNNING", "objects": 1,
        "owner": owner, "created_at": "2026-11-22T00:00:00+00:00", "resumed": 3, "documents_written": 0, "vectors_upserted": {},
        "rows_failed": 0, "rows_skipped": 0, "failures": [], "warnings": [], "reason": None, "rows_done": 0, "rows_total": 1})
    await stack.platform.catalog.insert("ingest_leases", collection_id, {"collection_id": collection_id, "owner": owner,
                                                                         "task_id": "tsk_doomed", "expires_at": 0})
    await stack.scheduler.recover()
    done = await stack.finished(collection_id)
    assert done.type == "IngestFailed" and "died 4 times" in done.payload.reason
    assert [f.step for f in done.payload.failures] == ["process"] and done.payload.failures[0].object_id.startswith("obj_")
    assert not await stack.platform.catalog.count("ingest_queue", {"collection_id": collection_id})
