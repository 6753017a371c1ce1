"""remove: `ObjectRemoved` → the object's documents and points gone from every collection of its
namespace that holds it, its queued ingest entries dropped → one `ObjectPurged` with the counts the
stores acknowledged (or `skipped`, naming the newer version of the key that stays).

The use case, with its ordering rules (S3 sequencer, then event time, then the store's `head`), is
`functions/services/remove.py`. Like ingest, an event whose namespace does not have the bucket is
refused (dead-lettered): the namespace is the platform's decision, never the event's.
"""

from __future__ import annotations

from events.envelope import AnyEnvelope, Envelope
from events.errors import PermanentError
from events.payloads import ObjectRemoved
from functions.records.collection import Collections, has_bucket
from functions.services.remove import remove_object
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore
from infra.settings import Settings
from infra.vectors.base import VectorIndex


async def handle(
    event: Envelope[ObjectRemoved], *, catalog: Catalog, vectors: VectorIndex, store: ObjectStore, settings: Settings,
) -> list[AnyEnvelope]:
    removal, namespace = event.payload, event.namespace or ""
    if not namespace or not (await Collections(catalog, vectors).for_object(namespace, removal.bucket, removal.key)
                             or await has_bucket(catalog, namespace, removal.bucket)):
        raise PermanentError(
            f"ObjectRemoved for {removal.bucket}/{removal.key} in namespace {event.namespace!r}: the namespace has no bucket "
            f"{removal.bucket!r}; refused", details={"bucket": removal.bucket, "key": removal.key, "namespace": event.namespace})
    objects = NamespaceStore(store, settings.data_bucket, namespace)
    outcome = await remove_object(catalog, vectors, objects, namespace, removal, cause=event.event_id)
    return [event.child(outcome.purged(removal))]
