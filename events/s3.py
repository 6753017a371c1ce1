"""How S3 and MinIO bucket notifications arrive, parsed into `ObjectCreated` and `ObjectRemoved`
payloads.

AWS names the event `ObjectCreated:Put` (and `:Post`, `:Copy`, `:CompleteMultipartUpload`); MinIO
prefixes it with `s3:`. Keys are form-URL-encoded (a space arrives as `+`). `versionId`, `eTag` and
`sequencer` are kept: together with bucket and key they identify one write, so a redelivered
notification can be recognised.

Poison is judged per record. Every malformed value (a field of the wrong JSON type, a time that is
not ISO 8601, a negative or non-integer size, a key whose URL escapes are broken or not UTF-8)
raises `PoisonMessage` naming the record and the field, never another exception. One bad record
does not cost the others: `decode_notification` gives the envelope of the good records and each
bad one as a `Reject` whose bytes are `{"Records": [record]}`, a notification of its own that can
be dead-lettered and replayed alone. A document that is not a notification at all (not JSON, no
`Records` list) is one poison message.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from events.dead_letters import Decoded, Reject
from events.envelope import AnyEnvelope, Envelope
from events.errors import PoisonMessage
from events.payloads import BucketNotification, ObjectCreated, ObjectRemoved, Payload

_CREATED = "ObjectCreated:"
_REMOVED = "ObjectRemoved:"  # Delete, DeleteMarkerCreated (versioned buckets)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_MAX_SIZE = 2**63 - 1  # what the catalog can store (64-bit integers)

Parsed = ObjectCreated | ObjectRemoved


def _is_object_created(event_name: str) -> bool:
    return event_name.removeprefix("s3:").startswith(_CREATED)


def _is_object_removed(event_name: str) -> bool:
    return event_name.removeprefix("s3:").startswith(_REMOVED)


def _source(record: dict[str, Any], document: dict[str, Any]) -> Literal["s3", "minio"]:
    if record.get("eventSource") == "minio:s3" or "EventName" in document or "source" in record:
        return "minio"
    return "s3"


def _records(data: bytes | str | dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The document and its `Records`; PoisonMessage when it is no notification at all."""
    if isinstance(data, (bytes, str)):
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PoisonMessage(f"bucket notification is not JSON: {exc}") from exc
    else:
        document = data
    if not isinstance(document, dict):
        raise PoisonMessage("bucket notification must be a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return document, []
    records = document.get("Records")
    if not isinstance(records, list):
        raise PoisonMessage("bucket notification has no `Records` list")
    return document, records


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PoisonMessage(f"{where} is not an object", details={"field": where})
    return value


def _text(value: Any, where: str, *, required: bool = False) -> str | None:
    """A string field (None when absent or empty, unless `required`)."""
    if value is None or value == "":
        if required:
            raise PoisonMessage(f"{where} is missing", details={"field": where})
        return None
    if not isinstance(value, str):
        raise PoisonMessage(f"{where} must be a string, not {type(value).__name__}", details={"field": where})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PoisonMessage(f"{where} is not valid text: {exc.reason}", details={"field": where}) from exc
    return value


def _key(value: Any, where: str) -> str:
    raw = _text(value, where, required=True)
    assert raw is not None
    if _BAD_ESCAPE.search(raw):
        raise PoisonMessage(f"{where} has a broken URL escape", details={"field": where})
    try:
        key = unquote_plus(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise PoisonMessage(f"{where} does not decode to UTF-8: {exc.reason}", details={"field": where}) from exc
    if not key:
        raise PoisonMessage(f"{where} is empty", details={"field": where})
    return key


def _size(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonMessage(f"{where} must be an integer, not {type(value).__name__}", details={"field": where})
    if not 0 <= value <= _MAX_SIZE:
        raise PoisonMessage(f"{where} is out of range: {value}", details={"field": where})
    return value


def _time(value: Any, where: str) -> datetime | None:
    text = _text(value, where)
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise PoisonMessage(f"{where} is not an ISO 8601 time: {exc}", details={"field": where}) from exc


def parse_record(record: Any, index: int, document: dict[str, Any]) -> Parsed | None:
    """One record: its payload, None for a record that is neither a create nor a remove, or
    PoisonMessage naming the record and the field."""
    where = f"Records[{index}]"
    record = _object(record, where)
    name = _text(record.get("eventName"), f"{where}.eventName") or ""
    removed = _is_object_removed(name)
    if not (removed or _is_object_created(name)):
        return None
    s3 = _object(record.get("s3"), f"{where}.s3")
    bucket = _text(_object(s3.get("bucket"), f"{where}.s3.bucket").get("name"), f"{where}.s3.bucket.name", required=True)
    obj = _object(s3.get("object"), f"{where}.s3.object")
    common: dict[str, Any] = {
        "bucket": bucket,
        "key": _key(obj.get("key"), f"{where}.s3.object.key"),
        "version_id": _text(obj.get("versionId"), f"{where}.s3.object.versionId"),
        "sequencer": _text(obj.get("sequencer"), f"{where}.s3.object.sequencer"),
        "event_time": _time(record.get("eventTime"), f"{where}.eventTime"),
        "source": _source(record, document),
    }
    try:
        if removed:
            return ObjectRemoved(**common)
        etag_field = "eTag" if "eTag" in obj else "etag"
        etag = _text(obj.get(etag_field), f"{where}.s3.object.{etag_field}")
        return ObjectCreated(
            **common,
            size=_size(obj.get("size"), f"{where}.s3.object.size"),
            etag=(etag.strip('"') or None) if etag else None,
            content_type=_text(obj.get("contentType"), f"{where}.s3.object.contentType"),
        )
    except ValueError as exc:  # pydantic's ValidationError: whatever the checks above did not foresee
        raise PoisonMessage(f"{where}: {exc}", details={"record": index}) from exc


def parse_records(data: bytes | str | dict[str, Any]) -> tuple[list[Parsed], list[tuple[int, Any, PoisonMessage]]]:
    """Every object-created and object-removed record of one notification, in order, and every
    malformed record as (index, record, error). Raises `PoisonMessage` only when the document is
    no notification at all."""
    document, records = _records(data)
    parsed: list[Parsed] = []
    rejected: list[tuple[int, Any, PoisonMessage]] = []
    for index, record in enumerate(records):
        try:
            one = parse_record(record, index, document)
        except PoisonMessage as exc:
            exc.details = {"record": index, **exc.details}
            rejected.append((index, record, exc))
            continue
        if one is not None:
            parsed.append(one)
    return parsed, rejected


def parse_bucket_notification(data: bytes | str | dict[str, Any]) -> list[ObjectCreated | ObjectRemoved]:
    """Every object-created and object-removed record of one notification, in order; other
    records and test events give none.

    Raises `PoisonMessage` naming the record and field when the document is not a notification
    or any record of it is malformed.
    """
    parsed, rejected = parse_records(data)
    if rejected:
        raise rejected[0][2]
    return parsed


def _envelope(value: bytes, records: list[Parsed]) -> AnyEnvelope:
    payload = BucketNotification(objects=[r for r in records if isinstance(r, ObjectCreated)],
                                 removed=[r for r in records if isinstance(r, ObjectRemoved)])
    return Envelope[Payload](event_id=hashlib.sha256(value).hexdigest()[:32], payload=payload)


def decode_notification(value: bytes) -> AnyEnvelope | Decoded:
    """A notification's bytes as an envelope for the runner. The event id is the digest of the
    bytes, so a redelivered notification gets the same id — and the events derived from it too.

    With malformed records: `Decoded` with the envelope of the good records (None when there are
    none) and one `Reject` per bad record, whose bytes are `{"Records": [record]}`."""
    records, rejected = parse_records(value)
    if not rejected:
        return _envelope(value, records)
    rejects = [Reject(value=_alone(record), error=error, index=index) for index, record, error in rejected]
    return Decoded(_envelope(value, records) if records else None, rejects)


def _alone(record: Any) -> bytes:
    """One record as a notification of its own (ASCII JSON: a lone surrogate stays an escape)."""
    return json.dumps({"Records": [record]}, separators=(",", ":")).encode()
