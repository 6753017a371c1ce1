"""Warm pools: small ingest tasks run in the collection's warm plugin hosts instead of a Ray Data
pipeline of their own, with the same counts and events; idle pools go, and give their CPUs back
to a pipeline (real local Ray, embedded stack)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.test_ingest import running_stack
from tests.integration.test_plugins_rest import hash_plugin, push

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _actor_ids(scheduler) -> set[str]:
    return {actor._actor_id.hex() for pool in scheduler.pools._pools.values() for actor in pool.actors}


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def test_small_tasks_reuse_the_collections_warm_pool_and_report_the_same_counts(tmp_path, ray_cluster):
    async with running_stack(tmp_path, ingest_max_delay_s=0.2) as stack:
        assert (await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
        collection_id = (await stack.collection("notes", "notes-bucket", "hash_embedder"))["collection_id"]

        for i in range(3):
            await stack.put("notes-bucket", f"a/{i}.txt", f"first burst note {i}".encode())
        first = await stack.finished(collection_id)
        assert first.type == "IngestCompleted" and first.payload.documents_written == 3, first.payload
        warm = _actor_ids(stack.scheduler)
        assert len(warm) == 1, stack.scheduler.pools.stats()

        await stack.put("notes-bucket", "b/0.txt", b"a later note")
        second = await stack.finished(collection_id, after=1)
        assert second.type == "IngestCompleted" and second.payload.documents_written == 1, second.payload
        assert second.payload.vectors_upserted == {"hash_embedding": 1}
        assert _actor_ids(stack.scheduler) == warm  # the same actor, its host and steps already built
        assert await stack.counts(collection_id) == (4, 4)

        # another collection of the same version is another run: a pool of its own
        other = (await stack.collection("other", "other-bucket", "hash_embedder"))["collection_id"]
        await stack.put("other-bucket", "x.txt", b"another collection's note")
        assert (await stack.finished(other)).type == "IngestCompleted"
        assert _actor_ids(stack.scheduler) - warm  # its own actor (the first pool may have made room for it: 2 CPUs)
        assert len(stack.scheduler.pools.stats()) <= 2


async def test_an_idle_pool_is_shut_down_and_the_next_task_starts_a_new_one(tmp_path, ray_cluster):
    async with running_stack(tmp_path, ingest_max_delay_s=0.2, ingest_warm_idle_s=1.0) as stack:
        assert (await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
        collection_id = (await stack.collection("notes", "notes-bucket", "hash_embedder"))["collection_id"]
        await stack.put("notes-bucket", "a.txt", b"a note")
        assert (await stack.finished(collection_id)).type == "IngestCompleted"
        first = _actor_ids(stack.scheduler)

        await _until(lambda: not stack.scheduler.pools.stats())  # scaled to zero
        await stack.put("notes-bucket", "b.txt", b"another note")
        assert (await stack.finished(collection_id, after=1)).type == "IngestCompleted"
        assert _actor_ids(stack.scheduler) and not (_actor_ids(stack.scheduler) & first)
        assert await stack.counts(collection_id) == (2, 2)


async def test_a_task_over_the_warm_limit_runs_as_a_pipeline_and_idle_pools_give_their_cpus_back(tmp_path, ray_cluster):
    async with running_stack(tmp_path, ingest_max_delay_s=1.0, ingest_warm_max_objects=2) as stack:
        assert (await push(stack.client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
        collection_id = (await stack.collection("notes", "notes-bucket", "hash_embedder"))["collection_id"]
        await stack.put("notes-bucket", "warm.txt", b"one note, warm pool")
        assert (await stack.finished(collection_id)).type == "IngestCompleted"
        assert stack.scheduler.pools.stats()

        await asyncio.gather(*(stack.put("notes-bucket", f"big/{i}.txt", f"note {i} of a bigger task".encode()) for i in range(6)))
        done = await stack.finished(collection_id, after=1)
        assert done.type == "IngestCompleted", done.payload
        written, seen = done.payload.documents_written, 2
        while written < 6:  # the burst may have been cut in several tasks
            more = await stack.finished(collection_id, after=seen)
            assert more.type == "IngestCompleted", more.payload
            written, seen = written + more.payload.documents_written, seen + 1
        assert not stack.scheduler.pools.stats()  # the idle pool went before the pipeline started
        assert await stack.counts(collection_id) == (7, 7)

