"""The remove, purge_removed and backfill functions, called directly on fakes (the in-memory catalog
and object store of tests/unit/test_handlers.py, and qdrant-client's in-memory index): what each one
removes, queues, records and reports. The same functions run over the REST app with real ingest in
tests/integration/test_object_removal.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events.envelope import Envelope, make
from events.errors import PermanentError
from events.payloads import BackfillCollection, BucketNotification, IngestCompleted, ObjectCreated, ObjectRemoved
from functions.handlers import backfill, ingest, notifications, purge_removed, remove
from functions.records.backfills import BACKFILLS, new_backfill
from functions.records.collection import COLLECTIONS, DOCUMENTS, INGEST_QUEUE, INGESTED, ensure_bucket, ingested_key, queue_key
from functions.records.removals import REMOVAL_WATCHES
from functions.records.tasks import TASKS
from functions.services import backfill as backfill_service
from functions.services.ingest import document_id_for, object_id_for
from infra.objectstore.tenant import NamespaceStore
from infra.vectors.base import Point, VectorIndex, VectorSpec, point_id
from infra.vectors.qdrant import QdrantVectorIndex
from tests.unit.test_handlers import Ports, Scheduler

pytestmark = pytest.mark.unit

NS, BUCKET = "acme", "docs"
DAY = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class World(Ports):
    """The handlers' ports, a vector index, and helpers that plant what ingest would have left."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.vectors: VectorIndex = QdrantVectorIndex(location=":memory:")

    def objects(self, namespace: str = NS) -> NamespaceStore:
        return NamespaceStore(self.store, self.settings.data_bucket, namespace)

    async def collection(self, collection_id: str, *, namespace: str = NS, prefix: str = "") -> dict:
        await ensure_bucket(self.catalog, namespace, BUCKET)
        index = f"idx_{collection_id}"
        await self.vectors.create_collection(index, {"v": VectorSpec(size=3)})
        return await self.catalog.insert(COLLECTIONS, collection_id, {
            "collection_id": collection_id, "namespace": namespace, "collection_name": collection_id,
            "source": {"bucket": BUCKET, "prefix": prefix}, "index_name": index,
            "vector_indexes": [{"name": "v", "dimensions": 3, "distance": "cosine"}],
        })

    async def written(self, collection_id: str, key: str, *, marker: str = "e1", chunks: int = 2, namespace: str = NS,
                      at: datetime = DAY) -> None:
        """What an ingest task leaves for one object version: documents, points, the ingested record."""
        object_id = object_id_for(namespace, BUCKET, key)
        base = document_id_for(collection_id, BUCKET, key, marker)
        docs, points = [], []
        for i in range(chunks):
            doc_id = f"{base}_{i}"
            pid = point_id(collection_id, doc_id)
            docs.append((doc_id, {"document_id": doc_id, "namespace": namespace, "collection_id": collection_id, "object_id": object_id,
                                  "point_id": pid, "source": {"bucket": BUCKET, "key": key, "version": marker}}))
            points.append(Point(id=pid, vectors={"v": [1.0, float(i), 0.5]}, payload={"object_id": object_id, "key": key}))
        await self.vectors.upsert(f"idx_{collection_id}", points)
        await self.catalog.upsert_many(DOCUMENTS, docs)
        await self.catalog.upsert(INGESTED, ingested_key(collection_id, BUCKET, key), {
            "collection_id": collection_id, "object_id": object_id, "bucket": BUCKET, "key": key, "marker": marker,
            "status": "written", "task_id": "tsk_old", "at": at.isoformat()})

    async def queued(self, collection_id: str, obj: ObjectCreated, *, claimed_by: str | None = None) -> str:
        key = queue_key(collection_id, obj.dedup_key)
        await self.catalog.insert(INGEST_QUEUE, key, {
            "namespace": NS, "collection_id": collection_id, "object": obj.model_dump(mode="json"), "correlation_id": None,
            "queued_at": 1.0, "claimed_by": claimed_by})
        return key

    async def counts(self, collection_id: str, key: str, namespace: str = NS) -> tuple[int, int]:
        object_id = object_id_for(namespace, BUCKET, key)
        documents = await self.catalog.count(DOCUMENTS, {"collection_id": collection_id, "object_id": object_id})
        return documents, await self.vectors.count(f"idx_{collection_id}", {"object_id": object_id})

    async def remove(self, removal: ObjectRemoved, namespace: str = NS) -> Envelope:
        [out] = await remove.handle(make(removal, namespace=namespace), catalog=self.catalog, vectors=self.vectors,
                                    store=self.store, settings=self.settings)
        return out


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    await w.catalog.connect()
    await w.store.connect()
    await w.vectors.connect()
    await w.store.ensure_bucket(w.settings.data_bucket)
    yield w
    await w.vectors.close()
    await w.store.close()
    await w.catalog.close()


def removed(key: str, *, at: datetime | None = DAY + timedelta(hours=1), sequencer: str | None = None) -> ObjectRemoved:
    return ObjectRemoved(bucket=BUCKET, key=key, event_time=at, sequencer=sequencer, source="s3")


def created(key: str, *, etag: str = "e2", at: datetime | None = None, sequencer: str | None = None) -> ObjectCreated:
    return ObjectCreated(bucket=BUCKET, key=key, size=5, etag=etag, event_time=at, sequencer=sequencer, source="s3")


# --- remove -----------------------------------------------------------------------------------

async def test_removal_purges_every_collection_of_the_namespace_holding_the_object_and_counts_what_the_stores_took(world):
    for cid, ns, prefix in (("col_a", NS, ""), ("col_b", NS, "reports/"), ("col_c", NS, "other/"), ("col_g", "globex", "")):
        await world.collection(cid, namespace=ns, prefix=prefix)
    await world.written("col_a", "reports/q1.txt", chunks=3)
    await world.written("col_b", "reports/q1.txt", chunks=2)
    await world.written("col_a", "reports/q2.txt", chunks=1)
    await world.written("col_g", "reports/q1.txt", chunks=2, namespace="globex")

    out = await world.remove(removed("reports/q1.txt"))

    purged = out.payload
    assert out.type == "ObjectPurged" and out.namespace == NS and purged.skipped is None
    assert purged.collections == ["col_a", "col_b"] and purged.documents_deleted == 5
    assert purged.vectors_deleted == {"col_a": 3, "col_b": 2}
    assert purged.object_id == object_id_for(NS, BUCKET, "reports/q1.txt")
    assert await world.counts("col_a", "reports/q1.txt") == (0, 0) and await world.counts("col_b", "reports/q1.txt") == (0, 0)
    assert await world.counts("col_a", "reports/q2.txt") == (1, 1)  # another object of the collection stays
    assert await world.counts("col_g", "reports/q1.txt", namespace="globex") == (2, 2)  # the same key of another namespace stays
    assert await world.catalog.get(INGESTED, ingested_key("col_a", BUCKET, "reports/q1.txt")) is None
    assert await world.catalog.get(INGESTED, ingested_key("col_g", BUCKET, "reports/q1.txt")) is not None


async def test_a_redelivered_removal_removes_nothing_more_and_reports_zeros(world):
    await world.collection("col_a")
    await world.written("col_a", "a.txt", chunks=2)
    first = await world.remove(removed("a.txt"))
    again = await world.remove(removed("a.txt"))
    assert first.payload.documents_deleted == 2 and first.payload.vectors_deleted == {"col_a": 2}
    assert again.payload.documents_deleted == 0 and again.payload.vectors_deleted == {} and again.payload.collections == []
    assert again.payload.skipped is None


async def test_the_remove_function_runs_once_per_event_so_a_redelivery_repeats_the_first_report():
    from functions.table import FUNCTIONS

    [row] = [f for f in FUNCTIONS if f.name == "remove"]
    assert row.once


async def test_removal_drops_the_objects_unclaimed_queue_entries_so_it_is_not_ingested_later(world):
    await world.collection("col_a")
    mine = await world.queued("col_a", created("a.txt", at=DAY))
    other = await world.queued("col_a", created("b.txt", at=DAY))
    out = await world.remove(removed("a.txt"))
    assert out.payload.entries_dropped == 1
    assert await world.catalog.get(INGEST_QUEUE, mine) is None and await world.catalog.get(INGEST_QUEUE, other) is not None


async def test_a_version_queued_after_the_removal_by_sequencer_is_kept_with_what_was_written(world):
    await world.collection("col_a")
    await world.written("col_a", "a.txt", marker="e1", chunks=2)
    older = await world.queued("col_a", created("a.txt", etag="e0", sequencer="0055AED6DCD9028100"))
    newer = await world.queued("col_a", created("a.txt", etag="e2", sequencer="0055AED6DCD90281F1"))
    out = await world.remove(removed("a.txt", sequencer="0055AED6DCD90281F0"))
    assert out.payload.skipped and "newer version" in out.payload.skipped and "0055AED6DCD90281F1" in out.payload.skipped
    assert out.payload.documents_deleted == 0 and out.payload.entries_dropped == 1
    assert await world.catalog.get(INGEST_QUEUE, newer) is not None and await world.catalog.get(INGEST_QUEUE, older) is None
    assert await world.counts("col_a", "a.txt") == (2, 2)  # the newer version's ingest replaces them


async def test_sequencers_of_different_lengths_compare_right_padded():
    from functions.services.remove import Order, order_of_queued

    removal = removed("a.txt", sequencer="0055AED6DCD90281F0", at=None)
    assert order_of_queued(created("a.txt", sequencer="0055AED6DCD90281F1"), removal) is Order.NEWER
    assert order_of_queued(created("a.txt", sequencer="0055AED6DCD902"), removal) is Order.OLDER
    assert order_of_queued(created("a.txt", sequencer="0055AED6DCD9028200"), removal) is Order.NEWER


async def test_a_version_written_after_the_removal_by_event_time_is_kept(world):
    await world.collection("col_a")
    later = await world.queued("col_a", created("a.txt", at=DAY + timedelta(hours=2)))
    out = await world.remove(removed("a.txt", at=DAY + timedelta(hours=1)))
    assert out.payload.skipped and await world.catalog.get(INGEST_QUEUE, later) is not None


async def test_when_the_order_cannot_be_told_the_store_decides(world):
    await world.collection("col_a")
    await world.written("col_a", "a.txt", chunks=2, at=DAY + timedelta(hours=1))  # recorded after the removal's time
    await world.objects().put_bytes(BUCKET, "a.txt", b"again")
    out = await world.remove(removed("a.txt", at=DAY))
    assert out.payload.skipped and "exists again" in out.payload.skipped
    assert await world.counts("col_a", "a.txt") == (2, 2)
    await world.objects().delete(BUCKET, "a.txt")
    out = await world.remove(removed("a.txt", at=DAY))
    assert out.payload.skipped is None and out.payload.documents_deleted == 2


async def test_an_object_removed_while_a_task_ingests_it_is_purged_again_when_the_task_ends(world):
    await world.collection("col_a")
    await world.catalog.insert(TASKS, "tsk_run", {"task_id": "tsk_run", "namespace": NS, "collection_id": "col_a", "status": "RUNNING"})
    claimed = await world.queued("col_a", created("a.txt", at=DAY), claimed_by="tsk_run")
    await world.written("col_a", "a.txt", chunks=1)  # an earlier version

    out = await world.remove(removed("a.txt"))
    assert out.payload.documents_deleted == 1 and out.payload.entries_dropped == 0
    assert await world.catalog.get(INGEST_QUEUE, claimed) is not None  # the running task's: not ours to take
    assert await world.catalog.count(REMOVAL_WATCHES, {"task_id": "tsk_run"}) == 1

    await world.written("col_a", "a.txt", marker="e2", chunks=3)  # the task writes the removed version after the purge
    await world.catalog.update(TASKS, "tsk_run", {"status": "COMPLETED"})
    ended = make(IngestCompleted(task_id="tsk_run", collection_id="col_a", status="COMPLETED", objects=1, documents_written=3),
                 namespace=NS)
    [late] = await purge_removed.handle(ended, catalog=world.catalog, vectors=world.vectors, store=world.store,
                                        settings=world.settings)
    assert late.type == "ObjectPurged" and late.payload.documents_deleted == 3 and late.payload.vectors_deleted == {"col_a": 3}
    assert await world.counts("col_a", "a.txt") == (0, 0)
    assert await world.catalog.count(REMOVAL_WATCHES) == 0
    assert await purge_removed.handle(ended, catalog=world.catalog, vectors=world.vectors, store=world.store,
                                      settings=world.settings) == []


async def test_a_task_that_ended_before_its_watch_was_written_is_purged_at_once(world):
    await world.collection("col_a")
    await world.catalog.insert(TASKS, "tsk_done", {"task_id": "tsk_done", "namespace": NS, "collection_id": "col_a",
                                                   "status": "COMPLETED"})
    await world.queued("col_a", created("a.txt", at=DAY), claimed_by="tsk_done")
    await world.written("col_a", "a.txt", chunks=2)
    out = await world.remove(removed("a.txt"))
    assert out.payload.documents_deleted == 2 and await world.catalog.count(REMOVAL_WATCHES) == 0


async def test_remove_refuses_an_event_for_a_bucket_its_namespace_does_not_have(world):
    await world.collection("col_g", namespace="globex")
    with pytest.raises(PermanentError, match="has no bucket 'docs'"):
        await world.remove(removed("a.txt"), namespace=NS)


async def test_notifications_map_removed_records_into_their_namespace_like_created_ones(world):
    await ensure_bucket(world.catalog, NS, BUCKET)
    data = world.settings.data_bucket
    raw = make(BucketNotification(
        objects=[created(f"{NS}/{BUCKET}/new.txt").model_copy(update={"bucket": data})],
        removed=[ObjectRemoved(bucket=data, key=f"{NS}/{BUCKET}/old.txt", sequencer="0A", source="s3"),
                 ObjectRemoved(bucket=data, key=f"{NS}/unused/x.txt", source="s3"),
                 ObjectRemoved(bucket="elsewhere", key=f"{NS}/{BUCKET}/y.txt", source="s3")]))
    out = await notifications.handle(raw, catalog=world.catalog, settings=world.settings)
    assert [(e.type, e.namespace, e.payload.bucket, e.payload.key) for e in out] == [
        ("ObjectCreated", NS, BUCKET, "new.txt"), ("ObjectRemoved", NS, BUCKET, "old.txt")]
    assert out[1].payload.sequencer == "0A" and out[1].causation_id == raw.event_id


# --- backfill ---------------------------------------------------------------------------------

async def _objects(world: World, keys: list[str], namespace: str = NS) -> None:
    for key in keys:
        await world.objects(namespace).put_bytes(BUCKET, key, f"text of {key}".encode(), content_type="text/plain")


async def test_backfill_queues_every_object_under_the_prefix_as_ingest_would(world):
    collection = await world.collection("col_a", prefix="reports/")
    await _objects(world, [f"reports/{i}.txt" for i in range(5)] + ["notes/x.txt"])
    await _objects(world, ["reports/theirs.txt"], namespace="globex")
    info = await world.objects().head(BUCKET, "reports/0.txt")
    assert info is not None
    arrived = ObjectCreated(bucket=BUCKET, key="reports/0.txt", size=info.size, etag=info.etag, source="upload")
    await ingest.handle(make(arrived, namespace=NS), catalog=world.catalog, vectors=world.vectors, ingest=Scheduler())

    counts = await backfill_service.backfill(world.catalog, world.objects(), collection)

    assert (counts.objects_listed, counts.objects_queued, counts.skipped_already_queued) == (5, 4, 1)
    entries = await world.catalog.find(INGEST_QUEUE, {"collection_id": "col_a"})
    assert sorted(e["object"]["key"] for e in entries) == [f"reports/{i}.txt" for i in range(5)]
    assert {e["id"] for e in entries} >= {queue_key("col_a", arrived.dedup_key)}  # the same key the ingest function uses
    assert {e["object"]["source"] for e in entries} == {"upload", "backfill"} and all(e["claimed_by"] is None for e in entries)


async def test_backfill_skips_versions_already_ingested_unless_forced_and_never_queues_a_version_twice(world):
    collection = await world.collection("col_a")
    await _objects(world, ["a.txt", "b.txt", "c.txt"])
    a = await world.objects().head(BUCKET, "a.txt")
    b = await world.objects().head(BUCKET, "b.txt")
    assert a is not None and b is not None
    await world.written("col_a", "a.txt", marker=a.etag or "", chunks=1)  # this version is in the collection
    await world.written("col_a", "b.txt", marker="an-older-etag", chunks=1)  # an older version is

    counts = await backfill_service.backfill(world.catalog, world.objects(), collection)
    assert (counts.objects_queued, counts.skipped_already_ingested, counts.objects_skipped) == (2, 1, 1)

    forced = await backfill_service.backfill(world.catalog, world.objects(), collection, force=True)
    assert (forced.objects_queued, forced.skipped_already_queued, forced.skipped_already_ingested) == (1, 2, 0)
    assert await world.catalog.count(INGEST_QUEUE, {"collection_id": "col_a"}) == 3


async def test_backfill_streams_the_listing_in_batches(world):
    collection = await world.collection("col_a")
    await _objects(world, [f"k{i:02}.txt" for i in range(7)])
    listed: list[int] = []
    real = world.objects()

    class Counting:
        """The namespace's store, counting how far the listing has been read."""

        async def list_objects(self, bucket: str, prefix: str = ""):
            async for info in real.list_objects(bucket, prefix):
                listed.append(1)
                yield info

    seen: list[tuple[int, int]] = []

    async def on_batch(counts) -> None:
        seen.append((len(listed), await world.catalog.count(INGEST_QUEUE)))

    counts = await backfill_service.backfill(world.catalog, Counting(), collection, batch_size=3, on_batch=on_batch)
    assert counts.objects_queued == 7
    assert seen == [(3, 3), (6, 6), (7, 7)]  # each batch queued before more of the listing is read


async def test_the_backfill_function_records_its_counts_and_a_redelivery_queues_nothing_twice(world):
    collection = await world.collection("col_a")
    await _objects(world, ["a.txt", "b.txt"])
    record = new_backfill(NS, collection, force=False, trigger="created")
    await world.catalog.insert(BACKFILLS, record["backfill_id"], record)
    command = make(BackfillCollection(backfill_id=record["backfill_id"], collection_id="col_a"), namespace=NS)
    scheduler = Scheduler()

    assert await backfill.handle(command, catalog=world.catalog, store=world.store, settings=world.settings, ingest=scheduler) == []
    done = await world.catalog.get(BACKFILLS, record["backfill_id"])
    assert done["status"] == "COMPLETED" and done["attempts"] == 1 and scheduler.pokes == 1
    assert (done["objects_listed"], done["objects_queued"], done["objects_skipped"]) == (2, 2, 0)

    await backfill.handle(command, catalog=world.catalog, store=world.store, settings=world.settings, ingest=scheduler)
    assert await world.catalog.get(BACKFILLS, record["backfill_id"]) == done  # finished: a redelivery does nothing
    assert await world.catalog.count(INGEST_QUEUE) == 2


async def test_a_backfill_cut_short_runs_again_without_queueing_twice(world):
    collection = await world.collection("col_a")
    await _objects(world, ["a.txt", "b.txt"])
    record = new_backfill(NS, collection, force=False, trigger="created")
    await world.catalog.insert(BACKFILLS, record["backfill_id"], {**record, "status": "RUNNING", "attempts": 1})
    await backfill_service.backfill(world.catalog, world.objects(), collection)  # what the first attempt queued
    command = make(BackfillCollection(backfill_id=record["backfill_id"], collection_id="col_a"), namespace=NS)
    await backfill.handle(command, catalog=world.catalog, store=world.store, settings=world.settings)
    done = await world.catalog.get(BACKFILLS, record["backfill_id"])
    assert done["status"] == "COMPLETED" and done["attempts"] == 2
    assert (done["objects_queued"], done["skipped_already_queued"]) == (0, 2)
    assert await world.catalog.count(INGEST_QUEUE) == 2


async def test_a_backfill_of_a_deleted_collection_fails_naming_it(world):
    collection = await world.collection("col_gone")
    record = new_backfill(NS, collection, force=True, trigger="reingest")
    await world.catalog.insert(BACKFILLS, record["backfill_id"], record)
    await world.catalog.delete(COLLECTIONS, "col_gone")
    command = make(BackfillCollection(backfill_id=record["backfill_id"], collection_id="col_gone", force=True), namespace=NS)
    await backfill.handle(command, catalog=world.catalog, store=world.store, settings=world.settings)
    done = await world.catalog.get(BACKFILLS, record["backfill_id"])
    assert done["status"] == "FAILED" and "col_gone" in done["reason"]


# --- REST deletes cut short --------------------------------------------------------------------


async def test_a_delete_cut_short_after_its_intent_is_finished_by_the_reconciler(world):
    from functions.records.removals import REMOVAL_INTENTS
    from functions.services.remove import complete_removals, record_intent

    await world.objects().ensure_bucket(BUCKET)
    await world.objects().put_bytes(BUCKET, "gone.txt", b"x")
    await world.objects().put_bytes(BUCKET, "stays.txt", b"y")
    cut = make(ObjectRemoved(bucket=BUCKET, key="gone.txt", event_time=datetime.now(UTC), source="rest"), namespace=NS)
    await record_intent(world.catalog, cut)  # the process died here: the object is still in the store, no event
    assert await complete_removals(world.catalog, world.publish, world.objects, older_than_s=0) == 1
    assert await world.objects().head(BUCKET, "gone.txt") is None
    assert [e.event_id for e in world.published] == [cut.event_id]
    assert await world.catalog.count(REMOVAL_INTENTS) == 0

    # an object written again after the delete was asked for stays, and nothing is announced
    world.published.clear()
    old = make(ObjectRemoved(bucket=BUCKET, key="stays.txt", event_time=DAY, source="rest"), namespace=NS)
    await record_intent(world.catalog, old)
    await world.catalog.update(REMOVAL_INTENTS, old.event_id, {"at": DAY.timestamp()})
    assert await complete_removals(world.catalog, world.publish, world.objects, older_than_s=0) == 1
    assert await world.objects().head(BUCKET, "stays.txt") is not None and world.published == []
    assert await world.catalog.count(REMOVAL_INTENTS) == 0
