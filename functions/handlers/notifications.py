"""notifications: raw S3 / MinIO bucket notifications (their own topic) → `ObjectCreated` and
`ObjectRemoved`, each in the namespace whose folder holds the object.

Tenants' objects live in the platform's data bucket under `{namespace}/{bucket}/`
(`infra/objectstore/tenant.py`), so the namespace of each object is read from where it is, never
from anything a tenant says. A notification for another bucket, or for a bucket its namespace
does not use, is logged and dropped: nothing would ingest it.
"""

from __future__ import annotations

import structlog

from events.envelope import AnyEnvelope, Envelope
from events.payloads import BucketNotification, ObjectCreated, ObjectRemoved
from functions.records.collection import has_bucket
from infra.catalog.base import Catalog
from infra.objectstore.tenant import owner_of
from infra.settings import Settings

log = structlog.get_logger("sluice.notifications")


async def handle(event: Envelope[BucketNotification], *, catalog: Catalog, settings: Settings) -> list[AnyEnvelope]:
    """Created objects first, then removed ones, each in the order of the notification (the two
    functions that take them run apart anyway; `remove` orders a removal against the key's versions)."""
    children = []
    known: dict[tuple[str, str], bool] = {}
    records: list[ObjectCreated | ObjectRemoved] = [*event.payload.objects, *event.payload.removed]
    for obj in records:
        where = owner_of(settings.data_bucket, obj.bucket, obj.key)
        if where is None:
            log.warning("notification.not_tenant_data", bucket=obj.bucket, key=obj.key, data_bucket=settings.data_bucket, type=obj.type)
            continue
        if (where.namespace, where.bucket) not in known:
            known[(where.namespace, where.bucket)] = await has_bucket(catalog, where.namespace, where.bucket)
        if not known[(where.namespace, where.bucket)]:
            log.warning("notification.unknown_bucket", namespace=where.namespace, bucket=where.bucket, key=where.key, type=obj.type)
            continue
        children.append(event.child(obj.model_copy(update={"bucket": where.bucket, "key": where.key}), namespace=where.namespace))
    return children
