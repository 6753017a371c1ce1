"""Dead-letter records (kind `dead_letters`, key the dead letter's id): every message, or rejected
record of one, that a function gave up on, with its original bytes, so it can be seen and replayed.

The id comes from where the bytes came from (`events.dead_letters.dead_letter_id`: source topic,
partition, offset, function, record index), so a dead letter written twice is recorded once.
Status: `open` → `replayed` (again and again: `replay_count`) | `discarded`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from events.dead_letters import DeadLetter
from events.errors import AlreadyExists, Conflict, NotFound
from infra.catalog.base import Catalog

DEAD_LETTERS = "dead_letters"


class DeadLetterStatus(StrEnum):
    """open (waiting for an operator) → replayed (published again to its source topic) | discarded."""

    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def new_record(dead_letter_id: str, letter: DeadLetter) -> dict[str, Any]:
    return {
        "dead_letter_id": dead_letter_id, "function": letter.function, "error_type": letter.error_type,
        "error": letter.error, "attempts": letter.attempts, "source_topic": letter.source_topic,
        "source_partition": letter.source_partition, "source_offset": letter.source_offset,
        "record_index": letter.record_index, "namespace": letter.namespace, "key_b64": letter.key_b64,
        "value_b64": letter.value_b64, "size": len(letter.value),
        "dead_letter": {"topic": letter.dead_letter_topic, "partition": letter.dead_letter_partition,
                        "offset": letter.dead_letter_offset, "timestamp_ms": letter.timestamp_ms},
        "created_at": _now(), "status": DeadLetterStatus.OPEN, "replayed_at": None, "replay_count": 0,
        "discarded_at": None,
    }


class DeadLetters:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def record(self, dead_letter_id: str, letter: DeadLetter) -> bool:
        """Store a dead letter once; False when it was recorded already (a redelivery)."""
        try:
            await self.catalog.insert(DEAD_LETTERS, dead_letter_id, new_record(dead_letter_id, letter))
        except AlreadyExists:
            return False
        return True

    async def get(self, dead_letter_id: str) -> dict[str, Any]:
        record = await self.catalog.get(DEAD_LETTERS, dead_letter_id)
        if record is None:
            raise NotFound(f"dead letter {dead_letter_id!r} does not exist", details={"dead_letter_id": dead_letter_id})
        return record

    async def list(self, *, function: str | None = None, status: str | None = None, namespace: str | None = None,
                   limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first."""
        where = {name: value for name, value in (("function", function), ("status", status), ("namespace", namespace))
                 if value is not None}
        return await self.catalog.find(DEAD_LETTERS, where, order_by="created_at", descending=True, limit=limit, offset=offset)

    async def count(self, *, status: str | None = None) -> int:
        return await self.catalog.count(DEAD_LETTERS, {"status": status} if status is not None else None)

    async def replayable(self, dead_letter_id: str) -> dict[str, Any]:
        """The record, if it may be replayed (open or replayed before); Conflict when discarded."""
        record = await self.get(dead_letter_id)
        if record.get("status") == DeadLetterStatus.DISCARDED:
            raise Conflict(f"dead letter {dead_letter_id!r} was discarded: it cannot be replayed",
                           details={"dead_letter_id": dead_letter_id, "status": record.get("status")})
        if not record.get("source_topic"):
            raise Conflict(f"dead letter {dead_letter_id!r} does not say which topic it came from: it cannot be replayed",
                           details={"dead_letter_id": dead_letter_id})
        return record

    async def mark_replayed(self, record: dict[str, Any]) -> dict[str, Any]:
        """Count one replay of `record` (as read by `replayable`); Conflict when it was discarded or
        replayed by someone else meanwhile."""
        dead_letter_id = record["dead_letter_id"]
        count = int(record.get("replay_count") or 0)
        updated = await self.catalog.update(
            DEAD_LETTERS, dead_letter_id,
            {"status": DeadLetterStatus.REPLAYED, "replayed_at": _now(), "replay_count": count + 1},
            expect={"status": {"$in": [DeadLetterStatus.OPEN, DeadLetterStatus.REPLAYED]}, "replay_count": count},
        )
        if updated is None:
            raise Conflict(f"dead letter {dead_letter_id!r} changed while it was replayed (discarded, or replayed again): "
                           "its bytes were published once more", details={"dead_letter_id": dead_letter_id})
        return updated

    async def discard(self, dead_letter_id: str) -> dict[str, Any]:
        """Mark a dead letter as dealt with, never to be replayed; discarding twice is a no-op."""
        record = await self.get(dead_letter_id)
        if record.get("status") == DeadLetterStatus.DISCARDED:
            return record
        updated = await self.catalog.update(DEAD_LETTERS, dead_letter_id,
                                            {"status": DeadLetterStatus.DISCARDED, "discarded_at": _now()})
        return updated if updated is not None else await self.get(dead_letter_id)


__all__ = ["DEAD_LETTERS", "DeadLetterStatus", "DeadLetters", "new_record"]
