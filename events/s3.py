"""How S3 and MinIO bucket notifications arrive, parsed into `ObjectCreated` and `ObjectRemoved`
payloads.

AWS names the event `ObjectCreated:Put` (and `:Post`, `:Copy`, `:CompleteMultipartUpload`); MinIO
prefixes it with `s3:`. Keys are form-URL-encoded (a space arrives as `+`). `versionId`, `eTag` and
`sequencer` are kept: together with bucket and key they identify one write, so a redelivered
notification can be recognised.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from events.envelope import AnyEnvelope, Envelope
from events.errors import PoisonMessage
from events.payloads import BucketNotification, ObjectCreated, ObjectRemoved, Payload

_CREATED = "ObjectCreated:"
_REMOVED = "ObjectRemoved:"  # Delete, DeleteMarkerCreated (versioned buckets)


def _is_object_created(event_name: str) -> bool:
    return event_name.removeprefix("s3:").startswith(_CREATED)


def _is_object_removed(event_name: str) -> bool:
    return event_name.removeprefix("s3:").startswith(_REMOVED)


def _source(record: dict[str, Any], document: dict[str, Any]) -> Literal["s3", "minio"]:
    if record.get("eventSource") == "minio:s3" or "EventName" in document or "source" in record:
        return "minio"
    return "s3"


def parse_bucket_notification(data: bytes | str | dict[str, Any]) -> list[ObjectCreated | ObjectRemoved]:
    """Every object-created and object-removed record of one notification, in order; other
    records and test events give none.

    Raises `PoisonMessage` naming the record and field when the document is not a notification.
    """
    if isinstance(data, (bytes, str)):
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PoisonMessage(f"bucket notification is not JSON: {exc}") from exc
    else:
        document = data
    if not isinstance(document, dict):
        raise PoisonMessage("bucket notification must be a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        raise PoisonMessage("bucket notification has no `Records` list")

    created: list[ObjectCreated | ObjectRemoved] = []
    for index, record in enumerate(records):
        where = f"Records[{index}]"
        if not isinstance(record, dict):
            raise PoisonMessage(f"{where} is not an object")
        name = str(record.get("eventName", ""))
        removed = _is_object_removed(name)
        if not (removed or _is_object_created(name)):
            continue
        try:
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            raw_key = obj["key"]
        except (KeyError, TypeError) as exc:
            raise PoisonMessage(f"{where}.s3 lacks {exc}", details={"record": index}) from exc
        etag = obj.get("eTag") or obj.get("etag")
        event_time = record.get("eventTime")
        try:
            if removed:
                created.append(ObjectRemoved(
                    bucket=bucket, key=unquote_plus(raw_key), version_id=obj.get("versionId") or None,
                    sequencer=obj.get("sequencer") or None,
                    event_time=datetime.fromisoformat(event_time.replace("Z", "+00:00")) if event_time else None,
                    source=_source(record, document),
                ))
                continue
            created.append(
                ObjectCreated(
                    bucket=bucket,
                    key=unquote_plus(raw_key),
                    size=int(obj.get("size", 0) or 0),
                    etag=etag.strip('"') if etag else None,
                    version_id=obj.get("versionId") or None,
                    sequencer=obj.get("sequencer") or None,
                    content_type=obj.get("contentType") or None,
                    event_time=datetime.fromisoformat(event_time.replace("Z", "+00:00")) if event_time else None,
                    source=_source(record, document),
                )
            )
        except (ValueError, TypeError) as exc:
            raise PoisonMessage(f"{where}: {exc}", details={"record": index}) from exc
    return created


def decode_notification(value: bytes) -> AnyEnvelope:
    """A notification's bytes as an envelope for the runner. The event id is the digest of the
    bytes, so a redelivered notification gets the same id — and the events derived from it too."""
    records = parse_bucket_notification(value)
    payload = BucketNotification(objects=[r for r in records if isinstance(r, ObjectCreated)],
                                 removed=[r for r in records if isinstance(r, ObjectRemoved)])
    return Envelope[Payload](event_id=hashlib.sha256(value).hexdigest()[:32], payload=payload)
