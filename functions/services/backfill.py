"""Backfill: the objects already in a collection's bucket, queued for ingest as if each had just
arrived.

The listing is streamed (`NamespaceStore.list_objects`, under the collection's prefix) and queued in
batches of `BATCH` objects, so a bucket of millions of keys never sits in memory. Each object becomes
the queue entry the ingest function would make for its `ObjectCreated` (`source="backfill"`, same key
`queue_key(collection, dedup_key)`), and the `IngestScheduler` takes the entries from there as usual.

Dedup by object version, as the ingest function does:
- a version already `written` for the collection (`ingested_objects`) is skipped, unless `force`
  (reingest): then it is queued again and ingested again (document and point ids derive from the
  collection, the object and its version, so a rerun overwrites, never adds);
- a version already queued or being ingested (its queue key exists, claimed or not) is never queued
  twice, forced or not: the entry there stands for it.

A batch is one catalog transaction of inserts (a redelivered command, or an `ObjectCreated` racing the
backfill, cannot overwrite an entry a task has claimed: an upsert would hand it out twice); when one
of its keys appeared meanwhile the batch is queued entry by entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import structlog

from events.envelope import make
from events.errors import AlreadyExists, NotFound
from events.payloads import BackfillCollection, ObjectCreated
from events.publisher import Publish
from functions.records.backfills import BACKFILLS, new_backfill
from functions.records.collection import COLLECTIONS, INGEST_QUEUE, INGESTED, ingested_key, queue_key
from infra.catalog.base import Catalog, Insert
from infra.objectstore.base import ObjectInfo
from infra.objectstore.tenant import NamespaceStore

log = structlog.get_logger("sluice.backfill")

BATCH = 500
"""Objects listed, checked and queued together (one catalog transaction per batch)."""


@dataclass
class BackfillCounts:
    objects_listed: int = 0
    objects_queued: int = 0
    objects_skipped: int = 0
    skipped_already_ingested: int = 0
    skipped_already_queued: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class CollectionGone(Exception):
    """The collection was deleted while its bucket was being listed; `counts` are those until then."""

    def __init__(self, message: str, counts: BackfillCounts) -> None:
        super().__init__(message)
        self.counts = counts


def object_created(info: ObjectInfo) -> ObjectCreated:
    """A listed object as the event its arrival would have been (listings carry no content type:
    the scheduler guesses it from the key, and reads small files to tell text)."""
    return ObjectCreated(bucket=info.bucket, key=info.key, size=info.size, etag=info.etag, version_id=info.version_id,
                         content_type=info.content_type, event_time=info.last_modified, source="backfill")


async def queue_backfill(publish: Publish, namespace: str, collection: dict, *, force: bool, trigger: str) -> dict:
    """A QUEUED backfill record and its `BackfillCollection` command, stored together (the outbox
    relays the command to the backfill function). Returns the record."""
    record = new_backfill(namespace, collection, force=force, trigger=trigger)
    command = make(BackfillCollection(backfill_id=record["backfill_id"], collection_id=collection["collection_id"], force=force),
                   namespace=namespace)
    await publish.commit([Insert(BACKFILLS, record["backfill_id"], record)], [command])
    return record


async def backfill(
    catalog: Catalog, objects: NamespaceStore, collection: dict, *, force: bool = False, correlation_id: str | None = None,
    backfill_id: str | None = None, batch_size: int = BATCH, on_batch: Callable[[BackfillCounts], Awaitable[None]] | None = None,
) -> BackfillCounts:
    """List `collection`'s bucket under its prefix and queue every object version it has not got
    (see the module's docstring). `on_batch` is called with the counts after each batch. Raises
    `CollectionGone` when the collection is deleted meanwhile (what was queued stays: the
    collection's delete removes its queue)."""
    counts = BackfillCounts()
    source = collection["source"]
    bucket, prefix = source["bucket"], source.get("prefix") or ""
    batch: list[ObjectCreated] = []

    async def flush() -> None:
        if await catalog.get(COLLECTIONS, collection["collection_id"]) is None:
            raise CollectionGone(f"collection {collection['collection_id']!r} was deleted during its backfill", counts)
        await _queue(catalog, collection, batch, counts, force=force, correlation_id=correlation_id, backfill_id=backfill_id)
        batch.clear()
        if on_batch is not None:
            await on_batch(counts)

    try:
        async for info in objects.list_objects(bucket, prefix):
            if not info.key.startswith(prefix):
                continue
            counts.objects_listed += 1
            batch.append(object_created(info))
            if len(batch) >= batch_size:
                await flush()
    except NotFound:  # the data bucket does not exist yet: nothing was ever stored
        log.info("backfill.no_bucket", collection_id=collection["collection_id"], bucket=bucket)
    if batch:
        await flush()
    return counts


async def _queue(catalog: Catalog, collection: dict, objects: list[ObjectCreated], counts: BackfillCounts, *, force: bool,
                 correlation_id: str | None, backfill_id: str | None) -> None:
    collection_id = collection["collection_id"]
    keys = {queue_key(collection_id, o.dedup_key): o for o in objects}
    # lookups by key, not a filter over the kind: filters scan it, and the queue grows with the backfill
    found = await asyncio.gather(*(catalog.get(INGEST_QUEUE, key) for key in keys))
    queued = {key for key, entry in zip(keys, found, strict=True) if entry is not None}
    written: dict[str, str | None] = {}
    if not force:
        versions = [ingested_key(collection_id, o.bucket, o.key) for o in keys.values()]
        for key, record in zip(versions, await asyncio.gather(*(catalog.get(INGESTED, k) for k in versions)), strict=True):
            if record is not None and record.get("status") == "written":
                written[key] = record.get("marker")
    fresh: list[tuple[str, dict]] = []
    for key, obj in keys.items():
        if key in queued:
            counts.skipped_already_queued += 1
        elif not force and written.get(ingested_key(collection_id, obj.bucket, obj.key)) == obj.version_marker:
            counts.skipped_already_ingested += 1
        else:
            fresh.append((key, {
                "namespace": collection["namespace"], "collection_id": collection_id, "object": obj.model_dump(mode="json"),
                "correlation_id": correlation_id, "queued_at": time.time(), "claimed_by": None,
                "backfill_id": backfill_id, "force": force,
            }))
    counts.skipped_already_queued += len(objects) - len(keys)  # the same version listed twice (cannot happen in one listing)
    if fresh:
        try:
            await catalog.transact([Insert(INGEST_QUEUE, key, doc) for key, doc in fresh])
            counts.objects_queued += len(fresh)
        except AlreadyExists:  # an ObjectCreated (or another run) queued one of them meanwhile: one by one
            for key, doc in fresh:
                try:
                    await catalog.insert(INGEST_QUEUE, key, doc)
                    counts.objects_queued += 1
                except AlreadyExists:
                    counts.skipped_already_queued += 1
    counts.objects_skipped = counts.skipped_already_ingested + counts.skipped_already_queued
    log.info("backfill.batch", collection_id=collection_id, listed=counts.objects_listed, queued=counts.objects_queued,
             skipped=counts.objects_skipped)
