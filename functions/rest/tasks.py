"""Task routes: the facts of every ingest task, kept for good."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from functions.records.tasks import Tasks
from functions.rest.deps import ScopedNamespace


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("id", "owner")}


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/namespaces/{namespace}/tasks", tags=["tasks"])

    @api.get("")
    async def list_tasks(
        namespace: ScopedNamespace, request: Request, collection_id: str | None = None,
        status: str | None = None, limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0),
    ) -> Any:
        tasks = await Tasks(request.app.state.platform.catalog).list(
            namespace, collection_id=collection_id, status=status, limit=limit, offset=offset)
        return {"tasks": [_public(t) for t in tasks]}

    @api.get("/{task_id}")
    async def get_task(namespace: ScopedNamespace, task_id: str, request: Request) -> Any:
        return _public(await Tasks(request.app.state.platform.catalog).get(namespace, task_id))

    return api
