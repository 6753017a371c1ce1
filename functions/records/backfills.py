"""Backfill records (kind `backfills`, never expire): one per listing of a collection's bucket, made
when a collection is created or `reingest` is asked, with what the listing found and queued.

A backfill is QUEUED when its `BackfillCollection` command is stored (with the record, in one outbox
commit), RUNNING while the backfill function lists the bucket (the counts grow batch by batch), then
COMPLETED or FAILED (`reason`). Its counts: `objects_listed` (under the collection's prefix),
`objects_queued` (new ingest queue entries), `objects_skipped` = `skipped_already_ingested` (that
version is written for the collection; never with `force`) + `skipped_already_queued` (that version
is queued or being ingested now). A redelivered command runs the listing again (`attempts` + 1) with
counts from zero; the queue's keys keep it from queueing an object version twice.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from events.errors import NotFound
from functions.records.status import BackfillStatus
from infra.catalog.base import Catalog

BACKFILLS = "backfills"
COUNTS = ("objects_listed", "objects_queued", "objects_skipped", "skipped_already_ingested", "skipped_already_queued")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def new_backfill(namespace: str, collection: dict, *, force: bool, trigger: str) -> dict:
    """A QUEUED backfill record of `collection` (store it with its command: `Insert(BACKFILLS, id, record)`)."""
    source = collection.get("source") or {}
    return {
        "backfill_id": "bkf_" + secrets.token_hex(10), "namespace": namespace, "collection_id": collection["collection_id"],
        "bucket": source.get("bucket"), "prefix": source.get("prefix") or "", "force": force, "trigger": trigger,
        "status": BackfillStatus.QUEUED, "created_at": _now(), "started_at": None, "finished_at": None, "attempts": 0,
        "reason": None, **dict.fromkeys(COUNTS, 0),
    }


class Backfills:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def get(self, namespace: str, collection_id: str, backfill_id: str) -> dict:
        record = await self.catalog.get(BACKFILLS, backfill_id)
        if record is None or record.get("namespace") != namespace or record.get("collection_id") != collection_id:
            raise NotFound(f"backfill {backfill_id!r} does not exist for collection {collection_id!r} in namespace {namespace!r}",
                           details={"backfill_id": backfill_id})
        return record

    async def start(self, backfill_id: str) -> dict | None:
        """Mark the backfill RUNNING for one more attempt, counts from zero; None when it is missing or finished."""
        record = await self.catalog.get(BACKFILLS, backfill_id)
        if record is None or record["status"] in (BackfillStatus.COMPLETED, BackfillStatus.FAILED):
            return None
        return await self.catalog.update(BACKFILLS, backfill_id, {
            "status": BackfillStatus.RUNNING, "started_at": _now(), "attempts": int(record.get("attempts") or 0) + 1,
            **dict.fromkeys(COUNTS, 0)}, expect={"status": record["status"], "attempts": record.get("attempts")})

    async def progress(self, backfill_id: str, counts: dict[str, int]) -> None:
        await self.catalog.update(BACKFILLS, backfill_id, dict(counts))

    async def finish(self, backfill_id: str, counts: dict[str, int], *, reason: str | None = None) -> dict | None:
        changes: dict[str, Any] = {**counts, "status": BackfillStatus.FAILED if reason else BackfillStatus.COMPLETED,
                                   "finished_at": _now(), "reason": reason}
        return await self.catalog.update(BACKFILLS, backfill_id, changes)
