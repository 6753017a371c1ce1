"""Ingest task records (kind `tasks`, never expire): one per job, with the counts the stores acknowledged."""

from __future__ import annotations

from typing import Any

from events.errors import NotFound
from infra.catalog.base import Catalog

TASKS = "tasks"


# --- tasks -----------------------------------------------------------------------------------

class Tasks:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def get(self, namespace: str, task_id: str) -> dict:
        record = await self.catalog.get(TASKS, task_id)
        if record is None or record.get("namespace") != namespace:
            raise NotFound(f"task {task_id!r} does not exist in namespace {namespace!r}", details={"task_id": task_id})
        return record

    async def list(self, namespace: str, *, collection_id: str | None = None, status: str | None = None,
                   limit: int = 100, offset: int = 0) -> list[dict]:
        where: dict[str, Any] = {"namespace": namespace}
        if collection_id:
            where["collection_id"] = collection_id
        if status:
            where["status"] = status
        return await self.catalog.find(TASKS, where, order_by="created_at", descending=True, limit=limit, offset=offset)


