"""How every event travels: one envelope around one payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.payloads import Payload

SCHEMA_VERSION = 1

P = TypeVar("P")


def new_id() -> str:
    return uuid.uuid4().hex


class Envelope(BaseModel, Generic[P]):
    """Identity, tracing and time around a payload.

    `correlation_id` is shared by every event caused (directly or not) by one request;
    `causation_id` is the id of the event that directly caused this one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=new_id, description="Unique id of this event.")
    type: str = Field(default="", description="The payload's type, repeated for routing without decoding it.")
    namespace: str | None = Field(
        default=None, description="Tenant the event belongs to; None for platform-wide events.", examples=["acme"]
    )
    correlation_id: str = Field(default_factory=new_id, description="Id shared by one causal chain.")
    causation_id: str | None = Field(default=None, description="Event that directly caused this one.")
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC), description="When it happened.")
    schema_version: int = Field(default=SCHEMA_VERSION, description="Envelope schema version.")
    payload: P = Field(description="The event itself.")

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Envelope[P]:
        payload_type = getattr(self.payload, "type", None)
        if not self.type and payload_type:
            object.__setattr__(self, "type", payload_type)
        elif payload_type and self.type != payload_type:
            raise ValueError(f"envelope type {self.type!r} does not match payload type {payload_type!r}")
        return self

    def child(self, payload: BaseModel, *, namespace: str | None = None) -> AnyEnvelope:
        """An event caused by this one: same correlation, causation = this event."""
        return _envelope(namespace=namespace if namespace is not None else self.namespace,
                         correlation_id=self.correlation_id, causation_id=self.event_id, payload=payload)


def make(payload: BaseModel, *, namespace: str | None = None, correlation_id: str | None = None) -> AnyEnvelope:
    """A new root event (no cause inside Sluice: a REST call, a notification, a file drop)."""
    kwargs = {"correlation_id": correlation_id} if correlation_id else {}
    return _envelope(namespace=namespace, payload=payload, **kwargs)


def _envelope(**fields: Any) -> AnyEnvelope:
    return Envelope[Payload](**fields)


if TYPE_CHECKING:
    AnyEnvelope = Envelope[Any]
    """Any event: for the type checker, an envelope whose payload may be read as any payload type
    (handlers narrow it with their `Envelope[SomePayload]` annotation)."""
else:
    AnyEnvelope = Envelope[Payload]  # validates and decodes through the payloads' discriminated union
