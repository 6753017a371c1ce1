"""ingest: `ObjectCreated` -> one entry in the durable queue of every collection it matches.

The handler only records; the `IngestScheduler` (functions/runtime/scheduler.py) turns a
collection's queue into a task and runs it. An event whose namespace is not the one its bucket is
bound to is refused (dead-lettered): the namespace is the platform's decision, never the event's.
"""

from __future__ import annotations

import time

import structlog

from events.envelope import AnyEnvelope, Envelope
from events.errors import AlreadyExists, PermanentError
from events.payloads import ObjectCreated
from functions.records.collection import INGEST_QUEUE, INGESTED, Collections, has_bucket, ingested_key, queue_key
from functions.runtime.scheduler import IngestScheduler
from infra.catalog.base import Catalog
from infra.vectors.base import VectorIndex

log = structlog.get_logger("sluice.ingest")


async def handle(
    event: Envelope[ObjectCreated], *, catalog: Catalog, vectors: VectorIndex, ingest: IngestScheduler | None = None,
) -> list[AnyEnvelope]:
    obj, namespace = event.payload, event.namespace or ""
    collections = await Collections(catalog, vectors).for_object(namespace, obj.bucket, obj.key) if namespace else []
    # a collection over the bucket means the namespace has it; only an event no collection takes is checked
    if not collections and (not namespace or not await has_bucket(catalog, namespace, obj.bucket)):
        raise PermanentError(
            f"ObjectCreated for {obj.bucket}/{obj.key} in namespace {event.namespace!r}: the namespace has no bucket "
            f"{obj.bucket!r}; refused", details={"bucket": obj.bucket, "key": obj.key, "namespace": event.namespace})
    queued = 0
    for collection in collections:
        collection_id = collection["collection_id"]
        done = await catalog.get(INGESTED, ingested_key(collection_id, obj.bucket, obj.key))
        if done is not None and done.get("marker") == obj.version_marker and done.get("status") == "written":
            log.info("ingest.already_written", collection_id=collection_id, key=obj.key, task_id=done.get("task_id"))
            continue
        try:
            await catalog.insert(INGEST_QUEUE, queue_key(collection_id, obj.dedup_key), {
                "namespace": event.namespace, "collection_id": collection_id, "object": obj.model_dump(mode="json"),
                "correlation_id": event.correlation_id, "queued_at": time.time(), "claimed_by": None,
            })
        except AlreadyExists:
            continue  # this version is queued or being ingested already
        queued += 1
    if queued:
        log.info("ingest.queued", key=obj.key, collections=queued)
        if ingest is not None:
            ingest.poke()
    return []
