"""`MemoryObjectStore`: the ObjectStore kept in dicts, for unit tests of handlers.

It passes the object store contract suite that the local folder store and S3 pass, except what
needs HTTP: it serves none (`serves_http = False`), so its presigned URLs (`memory://...`) name the
operation, bucket, key, expiry and size limit but no client can fetch them. `put_presigned` stands
in for the local store's PUT route, in process, with its rules: only a URL this store issued,
unaltered and unexpired, is accepted; it is single-use (`Forbidden` "this upload URL was already
used" after one successful PUT); a body over the URL's `max_bytes` is `TooLarge` and nothing is
stored. Otherwise it behaves like S3:

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
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from events.errors import Forbidden, InvalidInput
from events.lifecycle import Health
from infra.objectstore import rules
from infra.objectstore.base import ObjectInfo, ObjectStore, check_max_bytes, object_too_large

MAX_KEY_BYTES = 1024
PARAM_MAX_BYTES = "X-Sluice-Max-Bytes"  # as the local store's URLs
USED_MESSAGE = "this upload URL was already used"  # as the local store says it


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    content_type: str | None
    last_modified: datetime


@dataclass
class _Issued:
    """A presigned PUT URL this store handed out, and whether it was used."""

    bucket: str
    key: str
    expires: int
    content_type: str | None
    max_bytes: int | None
    used: bool = False


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
        self._issued: dict[str, _Issued] = {}  # presigned PUT URL -> what it allows

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

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        self._require_connected()
        check_max_bytes(max_bytes)
        data = self._object(bucket, key).data
        if max_bytes is not None and len(data) > max_bytes:
            raise object_too_large(bucket, key, max_bytes, len(data))
        return data

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
        self, bucket: str, key: str, *, expires_in: int = 3600, content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """Single-use; with `max_bytes`, `put_presigned` refuses a larger body (see the module doc)."""
        self._require_connected()
        check_max_bytes(max_bytes)
        url, expires = _presign("PUT", bucket, key, expires_in, content_type, max_bytes)
        now = time.time()
        for issued_url in [u for u, issued in self._issued.items() if issued.expires < now]:
            del self._issued[issued_url]  # expired: refused by the expiry check alone
        self._issued[url] = _Issued(bucket, key, expires, content_type or None, max_bytes)
        return url

    async def presign_get(self, bucket: str, key: str, *, expires_in: int = 3600) -> str:
        self._require_connected()
        return _presign("GET", bucket, key, expires_in, None, None)[0]

    async def put_presigned(self, url: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        """What the local store's PUT route does with `url`, in process (this store serves no HTTP):
        `Forbidden` for a URL this store did not issue (or one altered since), an expired one, a
        used one or the wrong Content-Type; `TooLarge` over its `max_bytes`. Nothing is stored then."""
        self._require_connected()
        issued = self._issued.get(url)
        if issued is None:
            raise Forbidden("the signature does not match this URL", details={"url": url})
        details = {"bucket": issued.bucket, "key": issued.key}
        if time.time() > issued.expires:
            raise Forbidden("the presigned URL has expired", details={**details, "expired_at": issued.expires})
        if issued.content_type is not None and (content_type or "").strip() != issued.content_type:
            raise Forbidden(f"this URL requires Content-Type: {issued.content_type}", details={**details, "content_type": content_type})
        if issued.used:
            raise Forbidden(USED_MESSAGE, details=details)
        if issued.max_bytes is not None and len(data) > issued.max_bytes:
            raise object_too_large(issued.bucket, issued.key, issued.max_bytes, len(data))
        info = self._put(issued.bucket, issued.key, data, issued.content_type or content_type)
        issued.used = True
        return info

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


def _presign(
    op: str, bucket: str, key: str, expires_in: int, content_type: str | None, max_bytes: int | None
) -> tuple[str, int]:
    """A URL that names what it would allow (unsigned: nothing serves it; `put_presigned` accepts
    only the exact URLs the store issued), and its expiry."""
    rules.check_bucket(bucket)
    check_key(key)
    rules.check_expires(expires_in)
    expires = math.ceil(time.time()) + expires_in
    params = {rules.PARAM_OP: op, rules.PARAM_EXPIRES: str(expires)}
    if content_type:
        params[rules.PARAM_CONTENT_TYPE] = content_type
    if max_bytes is not None:
        params[PARAM_MAX_BYTES] = str(max_bytes)
    if op == "PUT":  # two URLs for one key and expiry are still two URLs, each used once
        params["X-Sluice-Nonce"] = secrets.token_hex(8)
    return f"memory://{bucket}/{quote(key, safe='/')}?{urlencode(params)}", expires
