"""`MemoryObjectStore`: the ObjectStore kept in dicts, for unit tests of handlers.

It passes the object store contract suite that the local folder store and S3 pass, except what
needs HTTP: it serves none (`serves_http = False`), so its presigned URLs (`memory://...`) name the
operation, bucket, key and expiry but no client can fetch them. Otherwise it behaves like S3:

- bucket names follow the local store's (and S3's) rules, and a missing bucket is `NotFound`;
- a key is 1 to 1024 bytes of UTF-8; `a` and `a/b` may both exist (no folders);
- etags are the MD5 of the bytes, listings are in UTF-8 byte order and carry no content type;
- `url()` is `memory://bucket/key`: no plugin can open it, and nothing here pretends otherwise.

Stores built on one `buckets` dict share their objects; the objects outlive `close()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from events.errors import InvalidInput
from events.lifecycle import Health
from infra.objectstore import rules
from infra.objectstore.base import ObjectInfo, ObjectStore

MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    content_type: str | None
    last_modified: datetime


def check_key(key: str) -> None:
    """S3's rule: 1 to 1024 bytes of UTF-8."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        size = 0
    if not 1 <= size <= MAX_KEY_BYTES:
        raise InvalidInput(
            f"invalid object key {key!r}: use 1 to {MAX_KEY_BYTES} bytes of UTF-8", details={"key": key}
        )


class MemoryObjectStore(ObjectStore):
    """`buckets` ({bucket: {key: StoredObject}}) is the store: pass one dict to several stores to share it."""

    adapter_name = "memory"
    serves_http = False

    def __init__(self, buckets: dict[str, dict[str, StoredObject]] | None = None) -> None:
        self._buckets: dict[str, dict[str, StoredObject]] = {} if buckets is None else buckets

    async def _health(self) -> Health:
        return Health(status="ok", adapter=self.adapter_name, detail={"buckets": len(self._buckets)})

    def _bucket(self, bucket: str, key: str | None = None) -> dict[str, StoredObject]:
        """The bucket's objects, after checking the names; NotFound when the bucket does not exist."""
        rules.check_bucket(bucket)
        if key is not None:
            check_key(key)
        objects = self._buckets.get(bucket)
        if objects is None:
            raise rules.bucket_not_found(bucket)
        return objects

    def _object(self, bucket: str, key: str) -> StoredObject:
        stored = self._bucket(bucket, key).get(key)
        if stored is None:
            raise rules.object_not_found(bucket, key)
        return stored

    def _put(self, bucket: str, key: str, data: bytes, content_type: str | None) -> ObjectInfo:
        objects = self._bucket(bucket, key)
        data = bytes(data)  # a bytearray the caller changes later must not change the object
        stored = StoredObject(data, hashlib.md5(data).hexdigest(), content_type or None, datetime.now(UTC))
        objects[key] = stored
        return _info(bucket, key, stored)

    # -- the port --------------------------------------------------------------------------------

    async def ensure_bucket(self, bucket: str) -> None:
        self._require_connected()
        rules.check_bucket(bucket)
        self._buckets.setdefault(bucket, {})

    async def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        self._require_connected()
        return self._put(bucket, key, data, content_type)

    async def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        self._require_connected()
        self._bucket(bucket, key)  # refuse a bad name or a missing bucket before reading the file
        data = await asyncio.to_thread(Path(path).read_bytes)
        return self._put(bucket, key, data, content_type)

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        self._require_connected()
        return self._object(bucket, key).data

    async def download_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        self._require_connected()
        stored = self._object(bucket, key)
        await asyncio.to_thread(_write_file, Path(path), stored.data)
        return _info(bucket, key, stored)

    async def head(self, bucket: str, key: str) -> ObjectInfo | None:
        self._require_connected()
        rules.check_bucket(bucket)
        check_key(key)
        stored = self._buckets.get(bucket, {}).get(key)  # as S3: a missing bucket is a missing object
        return None if stored is None else _info(bucket, key, stored)

    def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self._require_connected()
        return self._iter_objects(bucket, prefix)

    async def _iter_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        objects = self._bucket(bucket)
        found = sorted((key.encode("utf-8"), key, stored) for key, stored in objects.items() if key.startswith(prefix))
        for _, key, stored in found:
            # As S3's listing: size, etag and time, but no content type.
            yield ObjectInfo(bucket=bucket, key=key, size=len(stored.data), etag=stored.etag,
                             last_modified=stored.last_modified)

    async def delete(self, bucket: str, key: str) -> None:
        self._require_connected()
        self._bucket(bucket, key).pop(key, None)

    async def presign_put(
        self, bucket: str, key: str, *, expires_in: int = 3600, content_type: str | None = None
    ) -> str:
        self._require_connected()
        return _presign("PUT", bucket, key, expires_in, content_type)

    async def presign_get(self, bucket: str, key: str, *, expires_in: int = 3600) -> str:
        self._require_connected()
        return _presign("GET", bucket, key, expires_in, None)

    def url(self, bucket: str, key: str) -> str:
        self._require_connected()
        rules.check_bucket(bucket)
        check_key(key)
        return f"memory://{bucket}/{key}"


def _info(bucket: str, key: str, stored: StoredObject) -> ObjectInfo:
    return ObjectInfo(bucket=bucket, key=key, size=len(stored.data), etag=stored.etag,
                      content_type=stored.content_type, last_modified=stored.last_modified)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _presign(op: str, bucket: str, key: str, expires_in: int, content_type: str | None) -> str:
    """A URL that names what it would allow (unsigned: nothing serves it)."""
    rules.check_bucket(bucket)
    check_key(key)
    rules.check_expires(expires_in)
    params = {rules.PARAM_OP: op, rules.PARAM_EXPIRES: str(math.ceil(time.time()) + expires_in)}
    if content_type:
        params[rules.PARAM_CONTENT_TYPE] = content_type
    return f"memory://{bucket}/{quote(key, safe='/')}?{urlencode(params)}"
