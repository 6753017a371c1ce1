"""The ObjectStore port: buckets of bytes, streamed files, presigned URLs.

Keys are plain strings (`/`-separated, never URL-encoded at this level). Callers put the namespace
at the start of every key they write, so tenants never share a key.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from events.errors import InvalidInput, TooLarge
from events.lifecycle import Lifecycle


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str | None = None  # without quotes
    content_type: str | None = None
    version_id: str | None = None
    last_modified: datetime | None = None


def check_max_bytes(max_bytes: int | None) -> None:
    """`max_bytes` is None (no limit) or a whole number of bytes, 0 or more."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise InvalidInput(f"max_bytes must be a whole number of bytes, 0 or more, not {max_bytes!r}",
                           details={"max_bytes": str(max_bytes)})


def object_too_large(bucket: str, key: str, limit: int, size: int | None = None) -> TooLarge:
    """The object is over `limit` bytes (`size` when known, else only "more than")."""
    amount = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    details: dict = {"bucket": bucket, "key": key, "limit_bytes": limit}
    if size is not None:
        details["size_bytes"] = size
    return TooLarge(f"object {key!r} in bucket {bucket!r} is {amount}; the limit is {limit} bytes", details=details)


class ObjectStore(Lifecycle, abc.ABC):
    """Every method raises `NotConnected` before `connect()`; missing objects raise `NotFound`."""

    serves_http: bool = True
    """Whether clients can fetch this store's presigned URLs over HTTP (S3's endpoint, or the
    local store's routes in the REST app). False only for the in-memory fake of unit tests."""

    bounds_presigned_puts: bool = True
    """Whether the store itself enforces a presigned PUT's `max_bytes` and uses it once (the local
    store, the in-memory fake). False for S3: its URLs are bounded only by their expiry, so the
    size must be checked when the upload is confirmed."""

    @abc.abstractmethod
    async def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist (idempotent)."""

    @abc.abstractmethod
    async def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        """Write an object atomically: readers see the old or the new bytes, never a part."""

    @abc.abstractmethod
    async def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        """Stream a local file into the store without reading it whole into memory."""

    @abc.abstractmethod
    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        """The whole object. Raises `NotFound` naming bucket and key. With `max_bytes`, an object
        larger than that raises `TooLarge` (413) without more than `max_bytes + 1` bytes being read."""

    @abc.abstractmethod
    async def download_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Stream an object to a local file (parents created)."""

    @abc.abstractmethod
    async def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """Metadata, or None when the object does not exist."""

    @abc.abstractmethod
    def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object under `prefix`, in key order (async generator)."""

    @abc.abstractmethod
    async def delete(self, bucket: str, key: str) -> None:
        """Remove an object; deleting a missing object is not an error."""

    @abc.abstractmethod
    async def presign_put(
        self, bucket: str, key: str, *, expires_in: int = 3600, content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """A URL that lets a client without credentials PUT this one key until it expires.
        When `content_type` is given the client must send that Content-Type.

        Where `bounds_presigned_puts` is True (the local store, and the in-memory fake), the URL is
        also single-use (after one successful PUT it is refused with 403) and, with `max_bytes`,
        a body larger than that is refused with 413 and nothing is stored; `max_bytes` is signed,
        so a client cannot raise it. Where it is False (S3), a presigned PUT cannot be bounded:
        the URL may be used again until it expires, and any size up to the store's own limit is
        accepted, so whoever confirms the upload must check its size (and delete it when over)."""

    @abc.abstractmethod
    async def presign_get(self, bucket: str, key: str, *, expires_in: int = 3600) -> str:
        """A URL that lets a client without credentials GET this one key until it expires."""

    def http_routers(self) -> list:
        """FastAPI routers the REST app must serve for this store (the local store serves its
        presigned URLs itself); none for stores that have their own endpoint."""
        return []

    @abc.abstractmethod
    def url(self, bucket: str, key: str) -> str:
        """The address plugin code resolves with `open_asset`: `s3://bucket/key` or `file:///...`."""
