"""Dead-letter routes, for the platform admin key only: list, show, replay, discard.

`GET /v1/admin/dead-letters` lists what the functions gave up on (newest first; filters: function,
status, namespace), `GET .../{id}` shows one with its original bytes (base64), `POST .../{id}/replay`
publishes those bytes again to the topic they came from (functions/services/dead_letters.py) and
`POST .../{id}/discard` marks one as dealt with. The records are written by the `dead_letters`
function (functions/handlers/dead_letters.py). Dead letters of every namespace are here, so no
namespace key may read them (`deps.PlatformAdmin`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from functions.records.dead_letters import DeadLetters, DeadLetterStatus
from functions.rest.deps import platform_admin
from functions.services import dead_letters as service


class DeadLetterSummary(BaseModel):
    dead_letter_id: str = Field(description="Id derived from where the bytes came from.", examples=["dlq_3f9a0c1d2e4b5a6978"])
    function: str | None = Field(default=None, description="The function that gave up.", examples=["notifications"])
    error_type: str | None = Field(default=None, description="The error's type.", examples=["poison_message"])
    error: str | None = Field(default=None, description="The error's message.")
    attempts: int | None = Field(default=None, description="Handler runs before giving up (0: never decoded).")
    source_topic: str | None = Field(default=None, description="Where the bytes were read; a replay publishes there.")
    source_partition: int | None = Field(default=None, description="Partition of the source message.")
    source_offset: int | None = Field(default=None, description="Offset of the source message.")
    record_index: int | None = Field(default=None, description="For one rejected record of a message: its index.")
    namespace: str | None = Field(default=None, description="The event's namespace, when the bytes are an envelope.")
    size: int = Field(default=0, description="Bytes of the original message (or record).")
    created_at: str = Field(description="ISO 8601 time it was recorded.")
    status: DeadLetterStatus = Field(description="`open`, `replayed` or `discarded`.")
    replayed_at: str | None = Field(default=None, description="ISO 8601 time of the last replay.")
    replay_count: int = Field(default=0, description="Replays so far.")
    discarded_at: str | None = Field(default=None, description="ISO 8601 time it was discarded.")


class DeadLetterView(DeadLetterSummary):
    key_b64: str | None = Field(default=None, description="The message key, base64.")
    value_b64: str = Field(description="The original bytes, base64: what a replay publishes.")
    dead_letter: dict[str, Any] = Field(default_factory=dict, description="Where the dead letter itself lies: topic, "
                                        "partition, offset, timestamp_ms.")


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterSummary] = Field(description="Newest first, without their bytes.")
    limit: int = Field(description="Page size asked for.")
    offset: int = Field(description="Records skipped.")


def _records(request: Request) -> DeadLetters:
    return DeadLetters(request.app.state.platform.catalog)


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/admin/dead-letters", tags=["dead letters"], dependencies=[Depends(platform_admin)])

    @api.get("", response_model=DeadLetterList)
    async def list_dead_letters(
        request: Request, function: str | None = None, status: DeadLetterStatus | None = None, namespace: str | None = None,
        limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0),
    ) -> Any:
        """Dead letters, newest first (admin key)."""
        listed = await _records(request).list(function=function, status=status, namespace=namespace, limit=limit, offset=offset)
        return {"dead_letters": listed, "limit": limit, "offset": offset}

    @api.get("/{dead_letter_id}", response_model=DeadLetterView)
    async def get_dead_letter(dead_letter_id: str, request: Request) -> Any:
        """One dead letter with its original bytes (admin key)."""
        return await _records(request).get(dead_letter_id)

    @api.post("/{dead_letter_id}/replay", response_model=DeadLetterView)
    async def replay_dead_letter(dead_letter_id: str, request: Request) -> Any:
        """Publish the original bytes again to their source topic, with their key (admin key).
        409 for a discarded dead letter."""
        platform = request.app.state.platform
        return await service.replay(platform.catalog, platform.bus, dead_letter_id)

    @api.post("/{dead_letter_id}/discard", response_model=DeadLetterView)
    async def discard_dead_letter(dead_letter_id: str, request: Request) -> Any:
        """Mark a dead letter as dealt with: it is never replayed (admin key)."""
        return await service.discard(request.app.state.platform.catalog, dead_letter_id)

    return api
