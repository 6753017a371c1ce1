"""Where tenants' buckets live: folders of one platform bucket, owned by their namespace.

A tenant's bucket `docs` in namespace `acme` is the prefix `acme/docs/` of the platform's data
bucket (`SLUICE_DATA_BUCKET`, default `sluice-data`). So the same bucket name in two namespaces
never collides, no tenant can name a platform bucket (plugin and model archives live in buckets
of their own) or another namespace's data, and nothing is "claimed" or "released": the namespace
is part of every physical key, decided by the platform, never by the tenant.

`NamespaceStore` is one namespace's view: the `ObjectStore` calls with the tenant's bucket and
key, mapped to the physical location. `owner_of` maps back, for raw bucket notifications.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from infra.objectstore.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class Location:
    """The tenant's names (`bucket`, `key`) of an object in `namespace`."""

    namespace: str
    bucket: str
    key: str


def physical_key(namespace: str, bucket: str, key: str) -> str:
    return f"{namespace}/{bucket}/{key}"


def owner_of(data_bucket: str, bucket: str, key: str) -> Location | None:
    """The namespace, tenant bucket and key of a physical object; None outside tenant data."""
    if bucket != data_bucket:
        return None
    namespace, _, rest = key.partition("/")
    tenant_bucket, _, tenant_key = rest.partition("/")
    if not namespace or not tenant_bucket or not tenant_key:
        return None
    return Location(namespace, tenant_bucket, tenant_key)


class NamespaceStore:
    """One namespace's buckets, as folders `{namespace}/{bucket}/` of the data bucket."""

    def __init__(self, store: ObjectStore, data_bucket: str, namespace: str) -> None:
        if not namespace or "/" in namespace:
            raise ValueError(f"invalid namespace {namespace!r} for a storage view")
        self.store, self.data_bucket, self.namespace = store, data_bucket, namespace

    def locate(self, bucket: str, key: str) -> tuple[str, str]:
        """The physical bucket and key of the tenant's `bucket`/`key`."""
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid bucket name {bucket!r}")
        return self.data_bucket, physical_key(self.namespace, bucket, key)

    def _tenant(self, info: ObjectInfo, bucket: str) -> ObjectInfo:
        prefix = f"{self.namespace}/{bucket}/"
        return replace(info, bucket=bucket, key=info.key.removeprefix(prefix))

    async def ensure_bucket(self, bucket: str) -> None:
        self.locate(bucket, "")
        await self.store.ensure_bucket(self.data_bucket)

    async def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        return self._tenant(await self.store.put_bytes(*self.locate(bucket, key), data, content_type=content_type), bucket)

    async def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        return self._tenant(await self.store.put_file(*self.locate(bucket, key), path, content_type=content_type), bucket)

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        return await self.store.get_bytes(*self.locate(bucket, key), max_bytes=max_bytes)

    async def download_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        return self._tenant(await self.store.download_file(*self.locate(bucket, key), path), bucket)

    async def head(self, bucket: str, key: str) -> ObjectInfo | None:
        info = await self.store.head(*self.locate(bucket, key))
        return None if info is None else self._tenant(info, bucket)

    async def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        async for info in self.store.list_objects(*self.locate(bucket, prefix)):
            yield self._tenant(info, bucket)

    async def delete(self, bucket: str, key: str) -> None:
        await self.store.delete(*self.locate(bucket, key))

    async def presign_put(self, bucket: str, key: str, *, expires_in: int = 3600, content_type: str | None = None,
                          max_bytes: int | None = None) -> str:
        return await self.store.presign_put(*self.locate(bucket, key), expires_in=expires_in, content_type=content_type,
                                            max_bytes=max_bytes)

    async def presign_get(self, bucket: str, key: str, *, expires_in: int = 3600) -> str:
        return await self.store.presign_get(*self.locate(bucket, key), expires_in=expires_in)

    def url(self, bucket: str, key: str) -> str:
        return self.store.url(*self.locate(bucket, key))
