"""The `feature_search` retriever: a query (text or vector) against one collection's vector index.

A text query is embedded by the Ray Serve deployment of the plugin version that built the
collection's index — the version pinned in the collection, never a newer one: the same code and
weights that embedded the documents, so query and document vectors are comparable. The call is one
deployment-handle request (`engine.realtime.control`); concurrent queries are batched in the
replica. A vector query skips the plugin. Results carry the documents' text, fields and source.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from engine.realtime import control
from events.errors import Conflict, InvalidInput, NotReady, PermanentError, PluginFailed
from functions.records import cache as record_cache
from functions.records.collection import COLLECTIONS, DOCUMENTS, Collections
from functions.records.deployments import DEPLOYMENTS
from functions.records.status import DEPLOYMENT_IN_FLIGHT, DeploymentStatus
from infra.catalog.base import Catalog
from infra.settings import Settings
from infra.vectors.base import VectorIndex

MAX_LIMIT = 1000
MAX_QUERY_CHARS = 100_000
FILTER_KEYS = ("object_id", "document_id", "bucket", "key", "version")
"""Payload keys a filter may name (each point carries them)."""


async def ready_deployment(catalog: Catalog, settings: Settings, plugin_id: str, *, what: str) -> dict:
    """The version's DEPLOYED record, waiting (bounded) for one in flight; else a clear error."""
    deadline = time.monotonic() + settings.retriever_wait_s
    while True:
        record = await record_cache.cached(catalog, DEPLOYMENTS, plugin_id, settings.retriever_cache_s,
                                           lambda: catalog.get(DEPLOYMENTS, plugin_id),
                                           keep=lambda r: r is not None and r["status"] == DeploymentStatus.DEPLOYED)
        if record is not None and record["status"] == DeploymentStatus.DEPLOYED:
            return record
        if record is None or record["status"] not in DEPLOYMENT_IN_FLIGHT or record.get("desired") != "deployed":
            status = record["status"] if record else "NOT_DEPLOYED"
            error = f": {record['error'].splitlines()[0]}" if record and record.get("error") else ""
            namespace = record["namespace"] if record else "{namespace}"
            raise Conflict(
                f"{what} is not deployed (status {status}{error}); deploy it with "
                f"POST /v1/namespaces/{namespace}/plugins/{plugin_id}/deploy",
                details={"plugin_id": plugin_id, "deployment_status": status},
            )
        if time.monotonic() >= deadline:
            raise NotReady(f"{what} is still deploying (status {record['status']}); try again shortly",
                           details={"plugin_id": plugin_id, "deployment_status": record["status"]})
        await asyncio.sleep(0.2)


async def call_deployment(record: dict, method: str, *args: Any, catalog: Catalog | None = None) -> Any:
    """`await handle.<method>.remote(*args)`; the plugin's own errors become `PluginFailed`. An
    unreachable deployment is NotReady (and its cached record in `catalog` is dropped)."""
    from ray import serve

    def unreachable(exc: BaseException) -> NotReady:
        control.forget_handle(record["app_name"])
        if catalog is not None:
            record_cache.forget(catalog, DEPLOYMENTS, record["plugin_id"])
        return NotReady(f"the deployment of plugin {record['plugin_name']} {record['version']} is not reachable: {exc}",
                        details={"plugin_id": record["plugin_id"]})

    if not control.has_handle(record["app_name"]):  # the first call per application asks Serve's controller (blocking)
        try:
            await asyncio.to_thread(control.handle, record["app_name"])
        except serve.exceptions.RayServeException as exc:  # no such application (deleted since the record was read)
            raise unreachable(exc) from exc
    try:
        return await getattr(control.handle(record["app_name"]), method).remote(*args)
    except (serve.exceptions.DeploymentUnavailableError, ValueError, KeyError) as exc:
        raise unreachable(exc) from exc
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        raise PluginFailed(
            f"plugin {record['plugin_name']} {record['version']} failed: {type(cause).__name__}: {cause}",
            details={"plugin_id": record["plugin_id"]},
        ) from exc


def _query_vector(vector: Any, dim: int) -> list[float]:
    if not isinstance(vector, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
        raise InvalidInput("query.vector must be a list of numbers", details={"field": "query.vector"})
    if len(vector) != dim:
        raise InvalidInput(f"query.vector has {len(vector)} dimensions; the index expects {dim}", details={"field": "query.vector"})
    if not all(math.isfinite(x) for x in vector):
        raise InvalidInput("query.vector holds NaN or infinite values", details={"field": "query.vector"})
    return [float(x) for x in vector]


def _pick_index(collection: dict, feature_uri: str | None, feature: str | None) -> dict:
    indexes = collection["vector_indexes"]
    if not indexes or not collection.get("index_name"):
        raise InvalidInput(f"collection {collection['collection_name']!r} has no vector index to search")
    if feature_uri is not None:
        for index in indexes:
            if index["feature_uri"] == feature_uri:
                return index
        known = [i["feature_uri"] for i in indexes]
        extractor = collection["feature_extractor"]
        raise InvalidInput(
            f"collection {collection['collection_name']!r} has no feature {feature_uri!r}: it was built by "
            f"{extractor['feature_extractor_name']}@{extractor['version']}, whose features are {known}; "
            "queries are embedded by the version that built the index, never another",
            details={"field": "feature_uri", "known": known},
        )
    if feature is not None:
        for index in indexes:
            if index["name"] == feature:
                return index
        names = [i["name"] for i in indexes]
        raise InvalidInput(f"collection {collection['collection_name']!r} has no vector {feature!r}; it has {names}",
                           details={"field": "feature", "known": names})
    return indexes[0]


def _filters(filters: Any) -> dict[str, Any] | None:
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise InvalidInput("filters must be an object of payload key to value or {'$in': [...]}", details={"field": "filters"})
    unknown = [k for k in filters if k not in FILTER_KEYS]
    if unknown:
        raise InvalidInput(f"filters may name {list(FILTER_KEYS)}; not {unknown}", details={"field": "filters", "known": list(FILTER_KEYS)})
    return filters


async def feature_search(
    catalog: Catalog, vectors: VectorIndex, settings: Settings, compute: Any, *,
    namespace: str, collection_id: str, query: dict[str, Any], limit: int = 10,
    feature_uri: str | None = None, feature: str | None = None, filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ranked documents of the collection nearest to the query, with scores, text, fields and source."""
    started = time.perf_counter()
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit!r}", details={"field": "limit"})
    if not isinstance(query, dict) or len([k for k in ("text", "vector") if query.get(k) is not None]) != 1:
        raise InvalidInput("query must hold exactly one of 'text' or 'vector'", details={"field": "query"})
    collection = await record_cache.cached(catalog, COLLECTIONS, collection_id, settings.retriever_cache_s,
                                           lambda: Collections(catalog, vectors).get(namespace, collection_id))
    if collection.get("namespace") != namespace:  # cached for another namespace's caller: same answer as the catalog's
        await Collections(catalog, vectors).get(namespace, collection_id)
    index = _pick_index(collection, feature_uri, feature)
    where = _filters(filters)
    timings: dict[str, float] = {}
    if query.get("vector") is not None:
        vector = _query_vector(query["vector"], int(index["dimensions"]))
    else:
        text = query["text"]
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("query.text must be non-empty text", details={"field": "query.text"})
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidInput(f"query.text is longer than {MAX_QUERY_CHARS} characters", details={"field": "query.text"})
        if not getattr(compute, "runs_jobs", False):
            raise PermanentError("text queries are embedded on Ray Serve, and compute is disabled (SLUICE_COMPUTE=none)")
        extractor = collection["feature_extractor"]
        what = (f"plugin {extractor['feature_extractor_name']} {extractor['version']} "
                f"(which built collection {collection['collection_name']!r})")
        record = await ready_deployment(catalog, settings, extractor["plugin_id"], what=what)
        embed_started = time.perf_counter()
        vector = await call_deployment(record, "embed", text, index["name"], dict(extractor.get("parameters") or {}),
                                       catalog=catalog)
        timings["embed_ms"] = round((time.perf_counter() - embed_started) * 1000, 3)
    search_started = time.perf_counter()
    hits = await vectors.search(collection["index_name"], index["name"], vector, limit=limit, where=where)
    timings["search_ms"] = round((time.perf_counter() - search_started) * 1000, 3)
    ids = [h.payload.get("document_id") for h in hits if h.payload.get("document_id")]
    scope = {"namespace": collection["namespace"], "collection_id": collection_id}  # never another collection's documents
    documents = {d["id"]: d for d in await catalog.find(DOCUMENTS, {"id": {"$in": ids}, **scope})} if ids else {}
    results = []
    for rank, hit in enumerate(hits, start=1):
        document = documents.get(hit.payload.get("document_id"), {})
        results.append({
            "rank": rank, "score": hit.score, "document_id": hit.payload.get("document_id"),
            "object_id": hit.payload.get("object_id"),
            "source": document.get("source") or {"bucket": hit.payload.get("bucket"), "key": hit.payload.get("key")},
            "text": document.get("text") or hit.payload.get("text"), "fields": document.get("fields") or {},
            "feature_uris": document.get("feature_uris") or [],
        })
    timings["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return {
        "collection_id": collection_id, "feature_uri": index["feature_uri"], "feature": index["name"],
        "plugin_id": collection["feature_extractor"]["plugin_id"], "results": results, "timings": timings,
    }


__all__ = ["FILTER_KEYS", "NotReady", "PluginFailed", "call_deployment", "feature_search", "ready_deployment"]
