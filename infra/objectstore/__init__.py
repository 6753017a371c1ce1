"""The ObjectStore port and its adapters: a local folder (with presigned-URL routes) and S3."""

from infra.objectstore.base import ObjectInfo, ObjectStore
from infra.objectstore.local import LocalObjectStore, presigned_router
from infra.objectstore.s3 import S3ObjectStore

__all__ = ["LocalObjectStore", "ObjectInfo", "ObjectStore", "S3ObjectStore", "presigned_router"]
