"""notifications: raw S3 / MinIO bucket notifications (their own topic) → `ObjectCreated`.

A bucket belongs to the namespace whose collection first bound it (`functions.records.collection`), so
each object becomes an event of that namespace. A notification for a bucket no collection uses is
logged and dropped: nothing would ingest it.
"""

from __future__ import annotations

import structlog

from events.envelope import AnyEnvelope, Envelope
from events.payloads import BucketNotification
from functions.records.collection import BUCKET_BINDINGS
from infra.catalog.base import Catalog

log = structlog.get_logger("sluice.notifications")


async def handle(event: Envelope[BucketNotification], *, catalog: Catalog) -> list[AnyEnvelope]:
    notification = event.payload
    created = []
    namespaces: dict[str, str | None] = {}
    for obj in notification.objects:
        if obj.bucket not in namespaces:
            binding = await catalog.get(BUCKET_BINDINGS, obj.bucket)
            namespaces[obj.bucket] = binding["namespace"] if binding else None
        namespace = namespaces[obj.bucket]
        if namespace is None:
            log.warning("notification.unbound_bucket", bucket=obj.bucket, key=obj.key)
            continue
        created.append(event.child(obj, namespace=namespace))
    return created
