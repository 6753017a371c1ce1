"""Collections: a bucket (and prefix) bound to one plugin version, with that version's vector index.

The vector index is created with the collection, named after it, with one named vector per
feature the plugin version declares — so each collection carries its own schema and a new plugin
version never forces a destructive reconfigure of anything shared. Buckets are the namespace's
own (`infra/objectstore/tenant.py`): the same name in two namespaces is two folders, so there is
nothing to claim or release; kind `buckets` records which names a namespace uses.
"""

from __future__ import annotations

import builtins
import difflib
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from events.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from functions.records import cache as record_cache
from functions.services.builtin_plugins import version_or_builtin
from infra.catalog.base import Catalog, declare_index
from infra.objectstore.base import ObjectStore
from infra.objectstore.rules import BUCKET_RE
from infra.vectors.base import VectorIndex, VectorSpec

COLLECTIONS = "collections"
COLLECTION_NAMES = "collection_names"
BUCKETS = "buckets"
DOCUMENTS = "documents"
INGEST_QUEUE = "ingest_queue"
INGESTED = "ingested_objects"

COLLECTION_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$")

# What the ingest scheduler reads on every wake, so its work per object stays the same however long
# the queue (functions/runtime/scheduler.py): a task's entries, and the walk over collections with
# unclaimed entries, each collection's oldest and newest, and its next batch.
declare_index(INGEST_QUEUE, "claimed_by")
declare_index(INGEST_QUEUE, "claimed_by", "collection_id")
declare_index(INGEST_QUEUE, "claimed_by", "collection_id", "queued_at")
# a collection's documents, and an object's (counts, replaced versions, removals)
declare_index(DOCUMENTS, "collection_id", "object_id")



def bucket_key(namespace: str, bucket: str) -> str:
    """Key of a namespace's bucket (kind `buckets`)."""
    return f"{namespace}/{bucket}"


def check_bucket_name(bucket: str, field: str = "bucket") -> None:
    if not BUCKET_RE.fullmatch(bucket or "") or ".." in bucket:
        raise InvalidInput(f"invalid bucket name {bucket!r}: 3-63 lowercase letters, digits, '.' or '-'", details={"field": field})


async def ensure_bucket(catalog: Catalog, namespace: str, bucket: str) -> None:
    """Record that `namespace` uses `bucket` (idempotent); the name is checked first."""
    check_bucket_name(bucket)
    if await catalog.get(BUCKETS, bucket_key(namespace, bucket)) is None:
        try:
            await catalog.insert(BUCKETS, bucket_key(namespace, bucket), {"namespace": namespace, "bucket": bucket, "created_at": _now()})
        except AlreadyExists:
            pass  # a concurrent first use recorded it


async def has_bucket(catalog: Catalog, namespace: str, bucket: str) -> bool:
    return await catalog.get(BUCKETS, bucket_key(namespace, bucket)) is not None


def name_key(namespace: str, name: str) -> str:
    """Key of a collection name (kind `collection_names`)."""
    return f"{namespace}/{name}"


def queue_key(collection_id: str, dedup_key: str) -> str:
    """Key of one object version queued for a collection (kind `ingest_queue`)."""
    return f"{collection_id}|{dedup_key}"


def ingested_key(collection_id: str, bucket: str, key: str) -> str:
    """Key of the last version of an object written for a collection (kind `ingested_objects`)."""
    return f"{collection_id}|{bucket}/{key}"


def index_name(namespace: str, collection_id: str) -> str:
    """The vector-index collection of one Sluice collection (namespace first: tenants never share)."""
    return f"sluice_{namespace}_{collection_id}".replace("-", "_")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def check_parameters(parameters: dict[str, Any], schema: dict[str, Any] | None, plugin: str) -> None:
    """Unknown parameter names are refused, naming the closest known one. Values are checked by
    the plugin's own pydantic schema when its steps are built."""
    known = sorted(((schema or {}).get("properties") or {}).keys())
    for key in parameters:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or 'none'}"
            raise InvalidInput(
                f"plugin {plugin!r} has no parameter {key!r}{hint}", details={"field": f"parameters.{key}", "known": known}
            )


class Collections:
    def __init__(self, catalog: Catalog, vectors: VectorIndex, store: ObjectStore | None = None,
                 plugins_bucket: str = "sluice-plugins") -> None:
        self.catalog = catalog
        self.vectors = vectors
        self.store = store  # where a builtin plugin's archive goes when a collection installs it
        self.plugins_bucket = plugins_bucket

    async def create(
        self, namespace: str, *, name: str, bucket: str, prefix: str, extractor: str, version: str | None,
        parameters: dict[str, Any], description: str | None = None,
    ) -> dict:
        if not COLLECTION_NAME_RE.fullmatch(name or ""):
            raise InvalidInput(
                f"invalid collection name {name!r}: 1-63 letters, digits, '_' or '-', starting with a letter",
                details={"field": "collection_name"},
            )
        check_bucket_name(bucket, "source.bucket")
        plugin = await version_or_builtin(self.catalog, self.store, self.plugins_bucket, namespace, extractor, version)
        manifest = plugin.get("manifest") or {}
        check_parameters(parameters, manifest.get("parameter_schema"), extractor)
        await ensure_bucket(self.catalog, namespace, bucket)

        collection_id = "col_" + secrets.token_hex(10)
        try:
            await self.catalog.insert(COLLECTION_NAMES, name_key(namespace, name), {"namespace": namespace, "collection_id": collection_id})
        except AlreadyExists as exc:
            raise Conflict(f"collection {name!r} already exists in namespace {namespace!r}", details={"collection_name": name}) from exc

        features = manifest.get("features") or []
        vector_indexes = [
            {
                "name": f["feature_name"], "dimensions": f["embedding_dim"], "distance": f["distance_metric"],
                "feature_uri": f"sluice://{plugin['plugin_name']}@{plugin['version']}/{f['feature_name']}",
            }
            for f in features
        ]
        index = index_name(namespace, collection_id)
        try:
            if vector_indexes:
                await self.vectors.create_collection(
                    index, {v["name"]: VectorSpec(size=v["dimensions"], distance=v["distance"]) for v in vector_indexes}
                )
            record = {
                "collection_id": collection_id, "namespace": namespace, "collection_name": name, "description": description,
                "source": {"bucket": bucket, "prefix": prefix},
                "feature_extractor": {
                    "feature_extractor_name": plugin["plugin_name"], "version": plugin["version"], "plugin_id": plugin["plugin_id"],
                    "parameters": {**(manifest.get("parameter_defaults") or {}), **parameters},
                },
                "vector_indexes": vector_indexes, "index_name": index if vector_indexes else None,
                "warnings": [] if vector_indexes else [
                    f"plugin {extractor!r} {plugin['version']} declares no features: documents only, no vectors"],
                "created_at": _now(),
            }
            return await self.catalog.insert(COLLECTIONS, collection_id, record)
        except BaseException:
            await self.catalog.delete(COLLECTION_NAMES, name_key(namespace, name))
            if vector_indexes:
                await self.vectors.delete_collection(index)
            raise

    async def get(self, namespace: str, collection_id: str) -> dict:
        record = await self.catalog.get(COLLECTIONS, collection_id)
        if record is None or record.get("namespace") != namespace:
            raise NotFound(
                f"collection {collection_id!r} does not exist in namespace {namespace!r}", details={"collection_id": collection_id}
            )
        return record

    async def list(self, namespace: str) -> list[dict]:
        return await self.catalog.find(COLLECTIONS, {"namespace": namespace}, order_by="collection_name")

    async def for_object(self, namespace: str, bucket: str, key: str) -> builtins.list[dict]:
        """The namespace's collections whose source matches an object (bucket, and key under the prefix)."""
        found = await self.catalog.find(COLLECTIONS, {"namespace": namespace, "source.bucket": bucket})
        return [c for c in found if key.startswith(c["source"]["prefix"])]

    async def with_counts(self, record: dict) -> dict:
        """The record plus `document_count` and each index's `vector_count`, as the stores report them."""
        documents = await self.catalog.count(DOCUMENTS, {"collection_id": record["collection_id"]})
        indexes = []
        for v in record["vector_indexes"]:
            count = await self.vectors.count(record["index_name"]) if record.get("index_name") else 0
            indexes.append({**v, "vector_count": count})
        return {**record, "document_count": documents, "vector_indexes": indexes}

    async def delete(self, namespace: str, collection_id: str) -> dict:
        record = await self.get(namespace, collection_id)
        if record.get("index_name"):
            await self.vectors.delete_collection(record["index_name"])
        documents = await self.catalog.delete_many(DOCUMENTS, {"collection_id": collection_id})
        await self.catalog.delete_many(INGEST_QUEUE, {"collection_id": collection_id})
        await self.catalog.delete_many(INGESTED, {"collection_id": collection_id})
        await self.catalog.delete(COLLECTIONS, collection_id)
        record_cache.forget(self.catalog, COLLECTIONS, collection_id)
        await self.catalog.delete(COLLECTION_NAMES, name_key(namespace, record['collection_name']))
        return {"deleted": True, "collection_id": collection_id, "documents_deleted": documents}
