"""One tenant must not stall the others: the ingest scheduler serves namespaces in turn, runs at
most `ingest_max_jobs_per_namespace` jobs of one namespace, and stops a job that runs past
`ingest_job_timeout_s` (real local Ray, embedded stack)."""

from __future__ import annotations

import threading
import time

import pytest

from events.payloads import ObjectCreated
from functions.runtime.scheduler import PendingQueue, next_queue
from tests.integration.test_ingest import hash_embedder_that, running_stack
from tests.integration.test_plugins_rest import hash_plugin, push

pytestmark = [pytest.mark.integration]

SLEEPY_EMBEDDER = hash_embedder_that("SLEEP", "time.sleep(600)  # a plugin that never answers within any sane limit",
                                     imports="import time")


# --- the order, without Ray ------------------------------------------------------------------

def _serve(queues: list[PendingQueue], *, per_namespace: int = 1) -> list[str]:
    """The order `next_queue` starts `queues` in with one slot (each job ends before the next)."""
    served: dict[str, int] = {}
    order = []
    ready = list(queues)
    for turn in range(1, len(queues) + 1):
        pick = next_queue(ready, served=served, running={}, per_namespace=per_namespace)
        assert pick is not None
        ready.remove(pick)
        served[pick.namespace] = turn
        order.append(pick.collection_id)
    return order


def test_namespaces_are_served_in_turn_however_many_collections_one_has_queued():
    queues = [PendingQueue(f"a{i}", "acme", oldest=float(i)) for i in range(5)]
    queues += [PendingQueue("b0", "globex", oldest=10.0)]
    queues += [PendingQueue("c0", "initech", oldest=20.0), PendingQueue("c1", "initech", oldest=21.0)]
    assert _serve(queues) == ["a0", "b0", "c0", "a1", "c1", "a2", "a3", "a4"]


def test_a_namespace_at_its_job_limit_waits_and_the_others_go_first():
    queues = [PendingQueue("a1", "acme", oldest=1.0), PendingQueue("b0", "globex", oldest=5.0)]
    assert next_queue(queues, served={}, running={"acme": 1}, per_namespace=1).collection_id == "b0"
    assert next_queue(queues[:1], served={}, running={"acme": 1}, per_namespace=1) is None
    assert next_queue(queues[:1], served={}, running={"acme": 1}, per_namespace=2).collection_id == "a1"


# --- the scheduler on a real Ray ----------------------------------------------------------------

async def _queue_directly(stack, entries: list[tuple[str, str, str, str, float]]) -> None:
    """Store the objects and queue them in one transaction: (namespace, collection_id, bucket, key,
    queued_at). The scheduler sees all of them at once, as after a burst."""
    records = []
    for namespace, collection_id, bucket, key, queued_at in entries:
        store = stack.platform.objects(namespace)
        await store.ensure_bucket(bucket)
        info = await store.put_bytes(bucket, key, f"text of {key} about rivers".encode(), content_type="text/plain")
        obj = ObjectCreated(bucket=bucket, key=key, size=info.size, etag=info.etag, content_type="text/plain", source="upload")
        records.append((f"{collection_id}|{obj.dedup_key}", {
            "namespace": namespace, "collection_id": collection_id, "object": obj.model_dump(mode="json"),
            "correlation_id": "c", "queued_at": queued_at, "claimed_by": None}))
    await stack.platform.catalog.upsert_many("ingest_queue", records)
    stack.scheduler.poke()


@pytest.mark.ray
async def test_one_namespace_s_backlog_does_not_starve_another_s_single_object(tmp_path, ray_cluster):
    async with running_stack(tmp_path, namespaces=("acme", "globex"), ingest_max_delay_s=0.2) as stack:
        assert stack.scheduler.settings.ingest_max_jobs == 2 and stack.scheduler.settings.ingest_max_jobs_per_namespace == 1
        for namespace in ("acme", "globex"):
            r = await push(stack.client, namespace, hash_plugin(), "hash_embedder", version="1.0.0")
            assert r.status_code == 200, r.text
        # two collections of acme's are enough: a FIFO scheduler would run both before globex's object
        a = [(await stack.collection(f"a{i}", f"a{i}-bucket", "hash_embedder"))["collection_id"] for i in range(2)]
        b = (await stack.collection("b", "b-bucket", "hash_embedder", namespace="globex"))["collection_id"]
        clock = time.time()
        backlog = [("acme", cid, f"a{i}-bucket", f"doc-{n}.txt", clock - 30 + i + n / 100)
                   for i, cid in enumerate(a) for n in range(3)]
        await _queue_directly(stack, [*backlog, ("globex", b, "b-bucket", "only.txt", clock - 1)])

        started = time.monotonic()
        done = {cid: await stack.finished(cid, timeout=120) for cid in [*a, b]}
        elapsed = time.monotonic() - started
        assert all(e.type == "IngestCompleted" for e in done.values()), [e.payload for e in done.values()]
        assert done[b].payload.documents_written == 1 and all(done[c].payload.documents_written == 3 for c in a)

        starts = [e.payload.collection_id for e in stack.events if e.type == "IngestStarted"]
        assert starts.index(b) < 2, f"globex's single object waited behind acme's backlog: {starts}"
        tasks = {t["collection_id"]: t for t in await stack.platform.catalog.find("tasks")}
        acme = sorted((tasks[c] for c in a), key=lambda t: t["started_at"])
        for before, after in zip(acme, acme[1:], strict=False):
            assert after["started_at"] >= before["finished_at"], "two acme jobs ran at once"
        assert tasks[b]["started_at"] < acme[1]["started_at"]
        print(f"\n3 tasks (2 acme, 1 globex) done in {elapsed:.1f}s; globex started #{starts.index(b) + 1}")


@pytest.mark.ray
async def test_a_job_past_its_time_limit_fails_naming_the_limit_and_the_next_job_runs(tmp_path, ray_cluster):
    async with running_stack(tmp_path, ingest_max_jobs=1, ingest_job_timeout_s=6, ingest_max_delay_s=0.2) as stack:
        r = await push(stack.client, "acme", hash_plugin(**{"processors/hashing.py": SLEEPY_EMBEDDER}), "hash_embedder",
                       version="1.0.0")
        assert r.status_code == 200, r.text
        sleepy = (await stack.collection("sleepy", "sleepy-bucket", "hash_embedder"))["collection_id"]
        after = (await stack.collection("after", "after-bucket", "hash_embedder"))["collection_id"]

        await stack.put("sleepy-bucket", "stuck.txt", b"please SLEEP for ever")
        await stack.wait_for(lambda e: e.type in ("IngestStarted", "IngestFailed") and e.payload.collection_id == sleepy,
                             timeout=60)
        # the running task keeps the limit it started with; the next one gets room to finish
        stack.scheduler.settings = stack.scheduler.settings.model_copy(update={"ingest_job_timeout_s": 120.0})
        await stack.put("after-bucket", "fine.txt", b"a text that embeds at once")

        failed = await stack.finished(sleepy, timeout=60)
        failed_at = time.monotonic()
        assert failed.type == "IngestFailed", failed.payload
        assert "time limit of 6 s" in failed.payload.reason and "SLUICE_INGEST_JOB_TIMEOUT_S" in failed.payload.reason
        task = await stack.platform.catalog.get("tasks", failed.payload.task_id)
        assert task["status"] == "FAILED" and task["reason"] == failed.payload.reason
        assert await stack.platform.catalog.get("ingest_leases", sleepy) is None
        assert not await stack.platform.catalog.count("ingest_queue", {"collection_id": sleepy})

        done = await stack.finished(after, timeout=60)
        assert done.type == "IngestCompleted" and done.payload.documents_written == 1, done.payload
        order = [(e.type, e.payload.collection_id) for e in stack.events if e.type in ("IngestStarted", "IngestFailed")]
        assert order.index(("IngestFailed", sleepy)) < order.index(("IngestStarted", after)), order
        leftover = [t.name for t in threading.enumerate() if t.name.startswith("StreamingExecutor-") and t.is_alive()]
        assert leftover == [], f"a Ray Data execution outlived its job: {leftover}"
        print(f"\nthe next job completed {time.monotonic() - failed_at:.1f}s after the timed-out one failed")
