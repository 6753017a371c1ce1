"""Search a collection by text: embed the query with the collection's own plugin version, then
ask its vector index.

The query is embedded in a Ray actor (`engine.ingest.worker.QueryEmbedder`), one per plugin
version and process, built on first use and kept: plugin code never runs in this process, and
the model loads once. The realtime issue moves this behind Ray Serve.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from events.errors import InvalidInput, PermanentError
from functions.collections import DOCUMENTS, Collections
from functions.ingest import IngestRefused, plugin_spec
from functions.plugin_catalog import VERSIONS
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.settings import Settings
from infra.vectors.base import VectorIndex

MAX_LIMIT = 1000
MAX_QUERY_CHARS = 100_000
MAX_EMBEDDERS = 8
"""Query embedders kept per process; the least recently used one is stopped beyond this."""

_embedders: OrderedDict[str, Any] = OrderedDict()
_lock = asyncio.Lock()


async def _embedder(catalog: Catalog, store: ObjectStore, settings: Settings, collection: dict, plugin: dict) -> Any:
    import ray

    from engine.ingest.worker import QueryEmbedder

    key = f"{collection['collection_id']}|{plugin['plugin_id']}|{plugin['sha256']}"
    async with _lock:
        if key not in _embedders:
            # One query at a time is cheap on CPU; the realtime issue puts query embedding on Serve
            # (and GPUs). It reserves no CPU: an idle query actor must never keep an ingest job's
            # actors from being placed.
            spec = await plugin_spec(catalog, store, settings, collection, plugin, gpus=0)
            _embedders[key] = ray.remote(num_cpus=0)(QueryEmbedder).remote(spec)
            while len(_embedders) > MAX_EMBEDDERS:
                _, old = _embedders.popitem(last=False)
                ray.kill(old)
        _embedders.move_to_end(key)
        return _embedders[key]


async def search(
    catalog: Catalog, vectors: VectorIndex, store: ObjectStore, settings: Settings, compute: Any, *,
    namespace: str, collection_id: str, query: str, limit: int = 10, feature: str | None = None,
) -> dict:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput("query must be non-empty text", details={"field": "query"})
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"query is longer than {MAX_QUERY_CHARS} characters", details={"field": "query"})
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}", details={"field": "limit"})
    collection = await Collections(catalog, vectors).get(namespace, collection_id)
    indexes = [v["name"] for v in collection["vector_indexes"]]
    if not indexes or not collection.get("index_name"):
        raise InvalidInput(f"collection {collection['collection_name']!r} has no vector index to search")
    feature = feature or indexes[0]
    if feature not in indexes:
        raise InvalidInput(f"collection {collection['collection_name']!r} has no vector {feature!r}; it has {indexes}",
                           details={"field": "feature", "known": indexes})
    if not getattr(compute, "runs_jobs", False):
        raise PermanentError("search embeds queries with Ray, and compute is disabled (SLUICE_COMPUTE=none)")
    plugin = await catalog.get(VERSIONS, collection["feature_extractor"]["plugin_id"])
    if plugin is None:
        raise PermanentError(f"the collection's plugin version {collection['feature_extractor']['plugin_id']} is no longer registered")
    try:
        embedder = await _embedder(catalog, store, settings, collection, plugin)
    except IngestRefused as exc:
        raise PermanentError(str(exc)) from exc
    embedded = await embedder.embed.remote([query])
    vector = (embedded.get(feature) or [None])[0]
    if vector is None:
        raise InvalidInput(f"the plugin produced no {feature!r} vector for this query")
    hits = await vectors.search(collection["index_name"], feature, vector, limit=limit)
    documents = {}
    ids = [h.payload.get("document_id") for h in hits if h.payload.get("document_id")]
    if ids:
        documents = {d["id"]: d for d in await catalog.find(DOCUMENTS, {"id": {"$in": ids}})}
    results = []
    for hit in hits:
        document = documents.get(hit.payload.get("document_id"), {})
        results.append({
            "score": hit.score, "document_id": hit.payload.get("document_id"), "object_id": hit.payload.get("object_id"),
            "source": document.get("source") or {"bucket": hit.payload.get("bucket"), "key": hit.payload.get("key")},
            "text": document.get("text") or hit.payload.get("text"), "fields": document.get("fields") or {},
        })
    return {"collection_id": collection_id, "feature": feature, "query": query, "results": results}
