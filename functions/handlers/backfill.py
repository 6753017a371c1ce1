"""backfill: `BackfillCollection` → the collection's bucket listed and every object version it has not
got queued for ingest (`functions/services/backfill.py`), with the counts in its backfill record.

Sent when a collection is created (objects already in its bucket are ingested too) and by `POST
.../collections/{id}/reingest` (`force`: versions already ingested are run again). Record-only, like
the ingest function: the `IngestScheduler` runs the queued entries. Replay-safe: a redelivered command
for a finished backfill does nothing; one for a backfill cut short lists the bucket again, and the queue's
keys keep each object version from being queued twice.
"""

from __future__ import annotations

import structlog

from events.envelope import AnyEnvelope, Envelope
from events.payloads import BackfillCollection
from functions.records.backfills import Backfills
from functions.records.collection import COLLECTIONS
from functions.runtime.scheduler import IngestScheduler
from functions.services.backfill import BackfillCounts, CollectionGone, backfill
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore
from infra.settings import Settings

log = structlog.get_logger("sluice.backfill")


async def handle(
    event: Envelope[BackfillCollection], *, catalog: Catalog, store: ObjectStore, settings: Settings,
    ingest: IngestScheduler | None = None,
) -> list[AnyEnvelope]:
    command, records = event.payload, Backfills(catalog)
    record = await records.start(command.backfill_id)
    if record is None:
        log.info("backfill.not_started", backfill_id=command.backfill_id, detail="missing, finished, or started elsewhere")
        return []
    collection = await catalog.get(COLLECTIONS, command.collection_id)
    if collection is None or collection.get("namespace") != record["namespace"] or event.namespace not in (None, record["namespace"]):
        await records.finish(command.backfill_id, BackfillCounts().as_dict(),
                             reason=f"collection {command.collection_id!r} does not exist (deleted before its backfill ran)")
        return []

    async def progress(counts: BackfillCounts) -> None:
        await records.progress(command.backfill_id, counts.as_dict())
        if ingest is not None and counts.objects_queued:
            ingest.poke()

    objects = NamespaceStore(store, settings.data_bucket, record["namespace"])
    try:
        counts = await backfill(catalog, objects, collection, force=command.force, correlation_id=event.correlation_id,
                                backfill_id=command.backfill_id, on_batch=progress)
    except CollectionGone as exc:
        await records.finish(command.backfill_id, exc.counts.as_dict(), reason=str(exc))
        return []
    await records.finish(command.backfill_id, counts.as_dict())
    log.info("backfill.completed", backfill_id=command.backfill_id, collection_id=command.collection_id, **counts.as_dict())
    return []
