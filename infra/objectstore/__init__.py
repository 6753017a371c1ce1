"""The ObjectStore port and its adapters: a local folder (with presigned-URL routes), S3, and the
in-memory fake of unit tests. An adapter's module loads on first use, so importing the port never
pulls in aiobotocore or FastAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra._lazy import lazy_exports
from infra.objectstore.base import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from infra.objectstore.local import LocalObjectStore, presigned_router
    from infra.objectstore.memory import MemoryObjectStore
    from infra.objectstore.s3 import S3ObjectStore

__all__ = ["LocalObjectStore", "MemoryObjectStore", "ObjectInfo", "ObjectStore", "S3ObjectStore", "presigned_router"]

__getattr__ = lazy_exports(__name__, {
    "LocalObjectStore": "infra.objectstore.local",
    "presigned_router": "infra.objectstore.local",
    "MemoryObjectStore": "infra.objectstore.memory",
    "S3ObjectStore": "infra.objectstore.s3",
})
