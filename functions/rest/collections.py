"""Collection routes: create (with its vector index), list, get with counts, search, delete, and the
backfill of what is already in the bucket.

Creating a collection queues a backfill (`BackfillCollection`, handled by the backfill function,
`functions/handlers/backfill.py`): objects already in its bucket under its prefix are ingested too.
`POST .../reingest` queues another one with `force`: object versions already ingested run again.
Both answer at once with the backfill's id; `GET .../backfills/{backfill_id}` shows its status and
counts (objects listed, queued, skipped) as the listing goes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from functions.records.backfills import Backfills
from functions.records.collection import Collections
from functions.rest.deps import ScopedNamespace
from functions.services.backfill import queue_backfill
from functions.services.deploy import request_deploy
from functions.services.retrieve import feature_search


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(description="Bucket whose objects this collection ingests.", examples=["docs"])
    prefix: str = Field(default="", description="Only keys under this prefix.", examples=["reports/"])


class ExtractorChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_extractor_name: str = Field(description="Plugin name.", examples=["my_extractor"])
    version: str | None = Field(default=None, description="Plugin version; omitted: the active one, pinned now.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Plugin parameters (defaults fill the rest).")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="Text to search for; embedded with the collection's plugin version.", examples=["warranty"])
    limit: int = Field(default=10, ge=1, le=1000, description="Most results.")
    feature: str | None = Field(default=None, description="Vector to search; default the collection's first.")


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection_name: str = Field(description="Unique in the namespace.", examples=["reports"])
    description: str | None = None
    source: Source
    feature_extractor: ExtractorChoice


def _collections(request: Request) -> Collections:
    platform = request.app.state.platform
    return Collections(platform.catalog, platform.vectors, platform.store, platform.settings.plugins_bucket)


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("id", "index_name")}


async def _backfill(request: Request, namespace: str, collection: dict, *, force: bool, trigger: str) -> dict:
    """A QUEUED backfill record and its command, stored together (the outbox relays the command)."""
    record = await queue_backfill(request.app.state.platform.outbox, namespace, collection, force=force, trigger=trigger)
    base = str(request.base_url).rstrip("/")
    return {"backfill_id": record["backfill_id"], "status": record["status"], "force": force,
            "status_url": f"{base}/v1/namespaces/{namespace}/collections/{collection['collection_id']}/backfills/{record['backfill_id']}"}


def _public_backfill(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "id"}


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/namespaces/{namespace}/collections", tags=["collections"])

    @api.post("", status_code=201)
    async def create(namespace: ScopedNamespace, body: CreateCollection, request: Request) -> Any:
        record = await _collections(request).create(
            namespace, name=body.collection_name, bucket=body.source.bucket, prefix=body.source.prefix,
            extractor=body.feature_extractor.feature_extractor_name, version=body.feature_extractor.version,
            parameters=body.feature_extractor.parameters, description=body.description,
        )
        platform = request.app.state.platform
        backfill = await _backfill(request, namespace, record, force=False, trigger="created")
        deployment = None
        if getattr(platform.compute, "runs_jobs", False):
            # Queries of this collection are embedded by its plugin version's deployment: start it now.
            deployment = await request_deploy(platform.catalog, platform.publish, namespace,
                                              record["feature_extractor"]["plugin_id"])
        return {**_public(record), "deployment_status": deployment["status"] if deployment else "NOT_DEPLOYED", "backfill": backfill}

    @api.get("")
    async def list_collections(namespace: ScopedNamespace, request: Request) -> Any:
        return {"collections": [_public(r) for r in await _collections(request).list(namespace)]}

    @api.get("/{collection_id}")
    async def get(namespace: ScopedNamespace, collection_id: str, request: Request) -> Any:
        collections = _collections(request)
        return _public(await collections.with_counts(await collections.get(namespace, collection_id)))

    @api.post("/{collection_id}/search")
    async def search_collection(namespace: ScopedNamespace, collection_id: str, body: SearchRequest, request: Request) -> Any:
        """Text search of one collection: `feature_search` with `{"text": query}`."""
        p = request.app.state.platform
        return await feature_search(p.catalog, p.vectors, p.settings, p.compute, namespace=namespace,
                                    collection_id=collection_id, query={"text": body.query}, limit=body.limit,
                                    feature=body.feature)

    @api.post("/{collection_id}/reingest", status_code=202)
    async def reingest(namespace: ScopedNamespace, collection_id: str, request: Request) -> Any:
        """List the collection's bucket again and ingest every object under its prefix, those already
        ingested at their current version too (a version queued or being ingested now is not queued
        twice). 202 with the backfill's id and status URL."""
        collection = await _collections(request).get(namespace, collection_id)
        return await _backfill(request, namespace, collection, force=True, trigger="reingest")

    @api.get("/{collection_id}/backfills/{backfill_id}")
    async def get_backfill(namespace: ScopedNamespace, collection_id: str, backfill_id: str, request: Request) -> Any:
        """A backfill's status (QUEUED, RUNNING, COMPLETED, FAILED with `reason`) and counts: objects
        listed, queued for ingest, and skipped (already ingested at that version, or already queued)."""
        return _public_backfill(await Backfills(request.app.state.platform.catalog).get(namespace, collection_id, backfill_id))

    @api.delete("/{collection_id}")
    async def delete(namespace: ScopedNamespace, collection_id: str, request: Request) -> Any:
        return await _collections(request).delete(namespace, collection_id)

    return api
