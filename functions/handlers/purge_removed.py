"""purge_removed: `IngestCompleted` / `IngestFailed` → what the ended task wrote for an object that was
removed while it ran is purged → one `ObjectPurged` per such object (none for most tasks).

The `remove` function cannot drop a queue entry a running task has claimed: that task may write the
removed version after the removal purged it. It leaves a removal watch (`functions/records/removals.py`)
naming the task; here, once the task's writes are all in, the object is purged again, unless its key
exists again in the store (then that newer version's ingest replaces what the task wrote).
"""

from __future__ import annotations

from events.envelope import AnyEnvelope, Envelope
from events.payloads import IngestCompleted, IngestFailed, ObjectRemoved
from functions.services.remove import purge_watched
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore
from infra.settings import Settings
from infra.vectors.base import VectorIndex


async def handle(
    event: Envelope[IngestCompleted | IngestFailed], *, catalog: Catalog, vectors: VectorIndex, store: ObjectStore,
    settings: Settings,
) -> list[AnyEnvelope]:
    done = await purge_watched(catalog, vectors, lambda namespace: NamespaceStore(store, settings.data_bucket, namespace),
                               event.payload.task_id)
    return [event.child(outcome.purged(ObjectRemoved.model_validate(record["removal"])), namespace=record["namespace"])
            for record, outcome in done]
