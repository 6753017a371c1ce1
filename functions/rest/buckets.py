"""Objects of a namespace's bucket: uploads (presigned PUT, then confirm → `ObjectCreated`) and
removal (`DELETE .../objects/{key}` → `ObjectRemoved`).

A bucket is the namespace's own folder of the data bucket (`infra/objectstore/tenant.py`): any
valid name works, and the same name in another namespace is another folder. Confirm publishes
`ObjectCreated` once; the ingest function takes it from there. A removal deletes the object from the
store, then publishes `ObjectRemoved(source="rest")`: the remove function takes its documents and
points out of every collection (`functions/services/remove.py`) and reports `ObjectPurged`.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from events.envelope import make
from events.errors import Conflict, InvalidInput, NotFound, TooLarge
from events.payloads import ObjectCreated, ObjectRemoved
from functions.records.collection import check_bucket_name, ensure_bucket
from functions.records.removals import REMOVAL_INTENTS
from functions.records.status import UploadStatus
from functions.rest.deps import ScopedNamespace
from functions.services.remove import record_intent
from infra.catalog.base import Delete, Update, WriteConflict
from infra.objectstore.local import key_problem

OBJECT_UPLOADS = "object_uploads"


class ObjectUploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="Object key in the bucket.", examples=["reports/q1.txt"], min_length=1, max_length=1024)
    content_type: str | None = Field(default=None, description="MIME type; the PUT must send it.", examples=["text/plain"])


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _check_key(key: str) -> None:
    """One rule for every store (the local store's, which is the strictest), so a key that works
    on one deployment works on all of them."""
    problem = key_problem(key)
    if problem:
        raise InvalidInput(f"invalid object key {key!r}: {problem}", details={"field": "key"})


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/namespaces/{namespace}/buckets/{bucket}", tags=["objects"])

    @api.post("/uploads", status_code=201)
    async def request_upload(namespace: ScopedNamespace, bucket: str, body: ObjectUploadRequest, request: Request) -> Any:
        platform = request.app.state.platform
        check_bucket_name(bucket)
        _check_key(body.key)
        await ensure_bucket(platform.catalog, namespace, bucket)
        objects = platform.objects(namespace)
        await objects.ensure_bucket(bucket)
        expires, limit = platform.settings.upload_url_expires_s, platform.settings.upload_max_bytes
        upload_id = "obj_" + secrets.token_hex(12)
        url = await objects.presign_put(bucket, body.key, expires_in=expires, content_type=body.content_type, max_bytes=limit)
        physical_bucket, physical_key = objects.locate(bucket, body.key)
        created = datetime.now(UTC)
        await platform.catalog.insert(OBJECT_UPLOADS, upload_id, {
            "upload_id": upload_id, "namespace": namespace, "bucket": bucket, "key": body.key,
            "location": {"bucket": physical_bucket, "key": physical_key},
            "content_type": body.content_type, "status": UploadStatus.AWAITING_UPLOAD, "created_at": created.isoformat(),
            "expires_at": (created + timedelta(seconds=expires)).isoformat(),
        })
        base = str(request.base_url).rstrip("/")
        return {
            "upload_id": upload_id, "presigned_url": url, "expires_in": expires, "max_bytes": limit,
            "upload_headers": {"Content-Type": body.content_type} if body.content_type else {},
            "confirm_url": f"{base}/v1/namespaces/{namespace}/buckets/{bucket}/uploads/{upload_id}/confirm",
        }

    @api.post("/uploads/{upload_id}/confirm")
    async def confirm(namespace: ScopedNamespace, bucket: str, upload_id: str, request: Request) -> Any:
        platform = request.app.state.platform
        upload = await platform.catalog.get(OBJECT_UPLOADS, upload_id)
        if upload is None or upload["namespace"] != namespace or upload["bucket"] != bucket:
            raise NotFound(f"upload {upload_id!r} does not exist in bucket {bucket!r} of namespace {namespace!r}")
        if upload["status"] == UploadStatus.EXPIRED:
            raise Conflict(f"upload {upload_id} expired before it was confirmed: request a new upload", details={"upload_id": upload_id})
        objects = platform.objects(namespace)
        info = await objects.head(bucket, upload["key"])
        if info is None:
            raise Conflict(f"nothing was uploaded for {upload_id} yet: PUT the object to the presigned URL first",
                           details={"upload_id": upload_id})
        limit = platform.settings.upload_max_bytes
        if upload["status"] == UploadStatus.AWAITING_UPLOAD and info.size > limit:  # S3 cannot bound a presigned PUT
            await objects.delete(bucket, upload["key"])
            raise TooLarge(f"the object is {info.size} bytes; the limit is {limit} bytes (SLUICE_UPLOAD_MAX_BYTES): it was "
                           "removed", details={"upload_id": upload_id, "size_bytes": info.size, "limit_bytes": limit,
                                               "setting": "SLUICE_UPLOAD_MAX_BYTES"})
        obj = ObjectCreated(
            bucket=bucket, key=upload["key"], size=info.size, etag=info.etag, version_id=info.version_id,
            content_type=info.content_type or upload.get("content_type"), event_time=info.last_modified, source="upload",
        )
        change = Update(OBJECT_UPLOADS, upload_id, {"status": UploadStatus.CONFIRMED, "confirmed_at": _now(), "size": info.size},
                        expect={"status": UploadStatus.AWAITING_UPLOAD})
        with contextlib.suppress(WriteConflict):  # a second confirm publishes nothing new
            await platform.outbox.commit([change], [make(obj, namespace=namespace)])  # the status and its event: both or neither
        return {"upload_id": upload_id, "status": UploadStatus.CONFIRMED, "object": obj.model_dump(mode="json")}

    @api.delete("/objects/{key:path}", status_code=202)
    async def remove_object(namespace: ScopedNamespace, bucket: str, key: str, request: Request) -> Any:
        """Delete the object from the store; its documents and points go from every collection of the
        namespace once the remove function has handled the `ObjectRemoved` this publishes (202: the
        event id; the outcome is the `ObjectPurged` event). 404 when the object does not exist."""
        platform = request.app.state.platform
        check_bucket_name(bucket)
        _check_key(key)
        objects = platform.objects(namespace)
        info = await objects.head(bucket, key)
        if info is None:
            raise NotFound(f"object {key!r} does not exist in bucket {bucket!r} of namespace {namespace!r}",
                           details={"bucket": bucket, "key": key})
        event = make(ObjectRemoved(bucket=bucket, key=key, event_time=datetime.now(UTC), source="rest"), namespace=namespace)
        await record_intent(platform.catalog, event)  # a crash before the commit below: the reconciler finishes it
        await objects.delete(bucket, key)  # first: the remove function asks the store whether the key exists again
        await platform.outbox.commit([Delete(REMOVAL_INTENTS, event.event_id)], [event])
        return {"event_id": event.event_id, "bucket": bucket, "key": key, "status": "REMOVING"}

    return api
