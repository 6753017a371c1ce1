"""Removing an object: its documents and points go from every collection of its namespace whose
source holds it, with its queued (not yet claimed) ingest entries and its `ingested_objects` records,
unless the key holds a version newer than the removal.

Ordering: notifications for one key may arrive in any order, and a key may be written again right
after it was removed. Each version of the key Sluice knows of (a queue entry: its `ObjectCreated`; a
written version: its `ingested_objects` record) is compared with the removal:
1. both have an S3 sequencer: the greater one is later (hex, the shorter right-padded with zeros, as
   AWS documents it; MinIO's is the modification time in hex nanoseconds);
2. else both have a time (a queue entry's `event_time`, a written version's `at`, when it was
   recorded): later or earlier by more than `CLOCK_MARGIN_S` (stores stamp whole seconds, and
   clocks differ); a written version's time only tells that it is older (it was written before the
   removal), never newer;
3. else, or when too close to tell, the store decides (`head`): if the key exists now, it was written
   again after the removal (or the removal was of an old version of a versioned key) and nothing is
   removed (`skipped`); if it does not, every version Sluice knows of is older.
A queued version newer than the removal skips the removal too (its ingest replaces what earlier
versions left, as any new version does). Queued entries of older versions are dropped either way.

Replay-safe: a redelivered removal finds nothing left and reports zeros (the `remove` function also
runs `once`, so a redelivery normally republishes the first report). An entry claimed by a running
task cannot be dropped: that task may write the removed version after this purge, so a removal
watch (`functions/records/removals.py`) makes the `purge_removed` function purge again when it ends.
Counts are what the stores acknowledged: documents the catalog deleted, and per collection the
points the vector index no longer counts for the object.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from events import codec
from events.envelope import AnyEnvelope
from events.errors import NotFound
from events.payloads import ObjectCreated, ObjectPurged, ObjectRemoved
from events.publisher import Publish
from functions.records.collection import COLLECTIONS, DOCUMENTS, INGEST_QUEUE, INGESTED, Collections, ingested_key
from functions.records.removals import REMOVAL_INTENTS, REMOVAL_WATCHES, watch_key
from functions.records.status import TASK_FINISHED
from functions.records.tasks import TASKS
from functions.services.ingest import object_id_for
from infra.catalog.base import Catalog, Delete, Update, WriteConflict
from infra.objectstore.tenant import NamespaceStore
from infra.vectors.base import VectorIndex

log = structlog.get_logger("sluice.remove")

CLOCK_MARGIN_S = 2.0
"""Two times closer than this do not order two events of one key (whole-second store times, clock skew)."""
PAGE = 1000
"""Documents read, and their points and records deleted, per round."""


class Order(enum.Enum):
    NEWER = "newer"
    OLDER = "older"
    UNKNOWN = "unknown"


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _by_sequencer(a: str, b: str) -> Order:
    width = max(len(a), len(b))
    left, right = a.upper().ljust(width, "0"), b.upper().ljust(width, "0")
    return Order.NEWER if left > right else Order.OLDER if left < right else Order.UNKNOWN


def _by_time(version: datetime, removal: datetime) -> Order:
    gap = (_utc(version) - _utc(removal)).total_seconds()
    return Order.NEWER if gap > CLOCK_MARGIN_S else Order.OLDER if gap < -CLOCK_MARGIN_S else Order.UNKNOWN


def order_of_queued(version: ObjectCreated, removal: ObjectRemoved) -> Order:
    """Whether a queued version of the key was written after the removal, before it, or cannot be told."""
    if version.version_id and version.version_id == removal.version_id:
        return Order.OLDER  # the removed version itself
    if version.sequencer and removal.sequencer:
        return _by_sequencer(version.sequencer, removal.sequencer)
    if version.event_time and removal.event_time:
        return _by_time(version.event_time, removal.event_time)
    return Order.UNKNOWN


def order_of_written(record: dict, removal: ObjectRemoved) -> Order:
    """A written version (its `ingested_objects` record) is older when it is the removed version, or
    was recorded before the removal; it is never known to be newer without asking the store."""
    if removal.version_id and record.get("marker") == removal.version_id:
        return Order.OLDER
    try:
        written = datetime.fromisoformat(str(record.get("at")))
    except ValueError:
        return Order.UNKNOWN
    if removal.event_time and _by_time(written, removal.event_time) is Order.OLDER:
        return Order.OLDER
    return Order.UNKNOWN


@dataclass
class Purged:
    """What one purge of one collection took out of the stores."""

    documents: int = 0
    vectors: int = 0
    ingested: bool = False

    def __bool__(self) -> bool:
        return bool(self.documents or self.vectors or self.ingested)


@dataclass
class Removal:
    """The outcome of one removal, before it becomes an `ObjectPurged`."""

    object_id: str
    per_collection: dict[str, Purged] = field(default_factory=dict)
    entries_dropped: int = 0
    skipped: str | None = None

    def purged(self, removal: ObjectRemoved) -> ObjectPurged:
        touched = {cid: p for cid, p in self.per_collection.items() if p}
        return ObjectPurged(
            bucket=removal.bucket, key=removal.key, object_id=self.object_id, collections=sorted(touched),
            documents_deleted=sum(p.documents for p in touched.values()),
            vectors_deleted={cid: p.vectors for cid, p in sorted(touched.items())}, skipped=self.skipped,
            entries_dropped=self.entries_dropped,
        )


async def purge(catalog: Catalog, vectors: VectorIndex, collection: dict, bucket: str, key: str, object_id: str) -> Purged:
    """Every document of the object in `collection`, its points (first: a purge cut short is run
    again from the documents), and its `ingested_objects` record."""
    collection_id, index = collection["collection_id"], collection.get("index_name")
    done = Purged()
    before = await _points(vectors, index, object_id)
    while True:
        page = await catalog.find(DOCUMENTS, {"collection_id": collection_id, "object_id": object_id}, limit=PAGE)
        if not page:
            break
        points = [d["point_id"] for d in page if d.get("point_id")]
        if points and index:
            try:
                await vectors.delete_points(index, points)
            except NotFound:
                index = None  # the index is gone: nothing of it to remove
        done.documents += await catalog.delete_many(DOCUMENTS, {"id": {"$in": [d["id"] for d in page]}})
        if len(page) < PAGE:
            break
    done.vectors = max(0, before - await _points(vectors, index, object_id))
    done.ingested = await catalog.delete(INGESTED, ingested_key(collection_id, bucket, key))
    return done


async def _points(vectors: VectorIndex, index: str | None, object_id: str) -> int:
    if not index:
        return 0
    try:
        return await vectors.count(index, {"object_id": object_id})
    except NotFound:
        return 0


async def remove_object(
    catalog: Catalog, vectors: VectorIndex, objects: NamespaceStore, namespace: str, removal: ObjectRemoved, *,
    cause: str | None = None,
) -> Removal:
    """Remove one object from its namespace's collections (see the module's docstring)."""
    bucket, key = removal.bucket, removal.key
    outcome = Removal(object_id=object_id_for(namespace, bucket, key))
    collections = {c["collection_id"]: c for c in await Collections(catalog, vectors).for_object(namespace, bucket, key)}
    if not collections:
        return outcome
    entries = await catalog.find(INGEST_QUEUE, {"collection_id": {"$in": sorted(collections)}, "object.bucket": bucket,
                                                "object.key": key})
    written = [r for cid in sorted(collections) if (r := await catalog.get(INGESTED, ingested_key(cid, bucket, key))) is not None]
    orders = {e["id"]: order_of_queued(ObjectCreated.model_validate(e["object"]), removal) for e in entries}
    newer = [e for e in entries if orders[e["id"]] is Order.NEWER]
    if newer:
        outcome.skipped = (f"a newer version of {key!r} was queued after the removal "
                           f"({_describe(ObjectCreated.model_validate(newer[0]['object']))})")
    elif Order.UNKNOWN in orders.values() or any(order_of_written(r, removal) is Order.UNKNOWN for r in written):
        info = await objects.head(bucket, key)
        if info is not None:
            outcome.skipped = (f"{key!r} exists again in bucket {bucket!r} (etag {info.etag}, modified "
                               f"{info.last_modified.isoformat() if info.last_modified else 'unknown'}): it was written after the removal")
        else:
            orders = {k: Order.OLDER if v is Order.UNKNOWN else v for k, v in orders.items()}
    running: dict[tuple[str, str], dict] = {}  # (task, collection) -> entry, for entries a task holds
    for entry in entries:
        if orders[entry["id"]] is not Order.OLDER:
            continue
        if entry.get("claimed_by") is None and await _drop(catalog, entry["id"]):
            outcome.entries_dropped += 1
            continue
        claimed = await catalog.get(INGEST_QUEUE, entry["id"])
        if claimed is not None and claimed.get("claimed_by"):
            running[(claimed["claimed_by"], claimed["collection_id"])] = claimed
    if outcome.skipped:
        log.info("object.removal_skipped", bucket=bucket, key=key, reason=outcome.skipped, entries_dropped=outcome.entries_dropped)
        return outcome
    for collection_id, collection in collections.items():
        outcome.per_collection[collection_id] = await purge(catalog, vectors, collection, bucket, key, outcome.object_id)
    for task_id, collection_id in running:
        late = await watch(catalog, vectors, collections[collection_id], task_id, namespace, removal, outcome.object_id, cause=cause)
        outcome.per_collection[collection_id].documents += late.documents
        outcome.per_collection[collection_id].vectors += late.vectors
    log.info("object.removed", bucket=bucket, key=key, object_id=outcome.object_id, entries_dropped=outcome.entries_dropped,
             documents=sum(p.documents for p in outcome.per_collection.values()), watched_tasks=len(running))
    return outcome


async def _drop(catalog: Catalog, entry_id: str) -> bool:
    """Delete a queue entry unless a task claimed it meanwhile (the scheduler's claim expects it unclaimed too)."""
    try:
        await catalog.transact([Update(INGEST_QUEUE, entry_id, {"claimed_by": None}, expect={"claimed_by": None}),
                                Delete(INGEST_QUEUE, entry_id)])
        return True
    except WriteConflict:
        return False  # claimed, or gone


async def watch(catalog: Catalog, vectors: VectorIndex, collection: dict, task_id: str, namespace: str, removal: ObjectRemoved,
                object_id: str, *, cause: str | None) -> Purged:
    """Record that `task_id` may still write the removed object into `collection`. When the task has
    finished meanwhile (so its writes are all in), purge again now; else `purge_removed` will when it ends."""
    key = watch_key(task_id, collection["collection_id"], object_id)
    await catalog.upsert(REMOVAL_WATCHES, key, {
        "task_id": task_id, "namespace": namespace, "collection_id": collection["collection_id"], "object_id": object_id,
        "removal": removal.model_dump(mode="json"), "cause": cause, "at": datetime.now(UTC).isoformat(),
    })
    task = await catalog.get(TASKS, task_id)
    if task is not None and task.get("status") not in TASK_FINISHED:
        log.info("object.removal_watched", task_id=task_id, collection_id=collection["collection_id"], key=removal.key)
        return Purged()
    late = await purge(catalog, vectors, collection, removal.bucket, removal.key, object_id)
    await catalog.delete(REMOVAL_WATCHES, key)
    return late


async def purge_watched(catalog: Catalog, vectors: VectorIndex, objects_of: Callable[[str], NamespaceStore],
                        task_id: str) -> list[tuple[dict, Removal]]:
    """For an ingest task that ended: purge again each object removed while it ran, unless its key
    exists again (then the newer version's ingest replaces what the task wrote). `objects_of(namespace)`
    gives the namespace's store. Returns each watch with its outcome; the watches are deleted."""
    done = []
    for record in await catalog.find(REMOVAL_WATCHES, {"task_id": task_id}):
        removal = ObjectRemoved.model_validate(record["removal"])
        outcome = Removal(object_id=record["object_id"])
        collection = await catalog.get(COLLECTIONS, record["collection_id"])
        info = await objects_of(record["namespace"]).head(removal.bucket, removal.key) if collection is not None else None
        if collection is None:
            outcome.skipped = f"collection {record['collection_id']!r} no longer exists"
        elif info is not None:
            outcome.skipped = f"{removal.key!r} exists again in bucket {removal.bucket!r}: it was written after the removal"
        else:
            outcome.per_collection[record["collection_id"]] = await purge(
                catalog, vectors, collection, removal.bucket, removal.key, record["object_id"])
        await catalog.delete(REMOVAL_WATCHES, record["id"])
        done.append((record, outcome))
    return done


def _describe(obj: ObjectCreated) -> str:
    parts = [f"sequencer {obj.sequencer}" if obj.sequencer else "", f"written {obj.event_time.isoformat()}" if obj.event_time else "",
             f"version {obj.version_marker}"]
    return ", ".join(p for p in parts if p)


async def record_intent(catalog: Catalog, event: AnyEnvelope) -> None:
    """Before a REST delete touches the store: what to finish if the process dies before the
    `ObjectRemoved` is stored (`functions/records/removals.py`)."""
    removal = event.payload
    await catalog.insert(REMOVAL_INTENTS, event.event_id, {
        "namespace": event.namespace, "bucket": removal.bucket, "key": removal.key, "event": codec.encode(event).decode(),
        "at": time.time(),
    })


async def complete_removals(catalog: Catalog, publish: Publish, objects_of: Callable[[str], NamespaceStore], *,
                            older_than_s: float = 60.0) -> int:
    """Finish the REST deletes a crash cut short: the object goes from the store (unless it was
    written again after the delete was asked for) and the intent's `ObjectRemoved` is stored with the
    intent's removal, in one outbox commit. Returns how many intents it finished."""
    finished = 0
    for intent in await catalog.find(REMOVAL_INTENTS, {"at": {"$lt": time.time() - older_than_s}}, limit=1000):
        event = codec.decode(intent["event"].encode())
        objects = objects_of(intent["namespace"])
        info = await objects.head(intent["bucket"], intent["key"])
        if info is None or info.last_modified is None or info.last_modified.timestamp() <= intent["at"]:
            if info is not None:
                await objects.delete(intent["bucket"], intent["key"])
            try:
                await publish.commit([Delete(REMOVAL_INTENTS, intent["id"])], [event])
            except WriteConflict:
                continue
        else:  # written again after the delete was asked for: the new object stays, nothing to announce
            await catalog.delete(REMOVAL_INTENTS, intent["id"])
        log.warning("remove.intent_completed", namespace=intent["namespace"], bucket=intent["bucket"], key=intent["key"])
        finished += 1
    return finished
