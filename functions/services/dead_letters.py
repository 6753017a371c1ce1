"""Replaying and discarding dead letters (REST `/v1/admin/dead-letters`, `sluice events dlq`).

A replay publishes the recorded bytes again, with the recorded key, to the topic they came from,
then counts the replay on the record: at least once (a failure between the two leaves the record
open, and replaying it again publishes the bytes again; handlers are replay-safe). The replayed
message carries `x-sluice-replay-of: <id>`. A discarded or unknown dead letter is never replayed.
"""

from __future__ import annotations

import base64
from typing import Any

import structlog

from events.bus import EventBus
from events.dead_letters import REPLAY_OF
from functions.records.dead_letters import DeadLetters
from infra.catalog.base import Catalog

log = structlog.get_logger("sluice.dead_letters")


async def replay(catalog: Catalog, bus: EventBus, dead_letter_id: str) -> dict[str, Any]:
    """Publish the dead letter's bytes again to its source topic; the updated record. NotFound
    for an unknown id, Conflict for a discarded one."""
    records = DeadLetters(catalog)
    record = await records.replayable(dead_letter_id)
    key = base64.b64decode(record["key_b64"]) if record.get("key_b64") else None
    await bus.publish(record["source_topic"], base64.b64decode(record["value_b64"]), key=key,
                      headers=[(REPLAY_OF, dead_letter_id.encode())])
    updated = await records.mark_replayed(record)
    log.info("dead_letter.replayed", dead_letter_id=dead_letter_id, source_topic=record["source_topic"],
             replay_count=updated.get("replay_count"))
    return updated


async def discard(catalog: Catalog, dead_letter_id: str) -> dict[str, Any]:
    """Mark the dead letter as dealt with; NotFound for an unknown id."""
    record = await DeadLetters(catalog).discard(dead_letter_id)
    log.info("dead_letter.discarded", dead_letter_id=dead_letter_id)
    return record


__all__ = ["discard", "replay"]
