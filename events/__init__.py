"""The contract: envelope, payloads, topic names, codec, the EventBus port, notification parsing."""

from events.bus import Consumer, EventBus, Message
from events.codec import decode, encode, peek_type
from events.envelope import AnyEnvelope, Envelope, make
from events.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InvalidInput,
    NotConnected,
    NotFound,
    PermanentError,
    PoisonMessage,
    SluiceError,
    TransientError,
    Unauthorized,
)
from events.lifecycle import Health, Lifecycle
from events.payloads import *  # noqa: F403 - the payload models are the public API
from events.payloads import PAYLOAD_TYPES, Payload
from events.s3 import parse_bucket_notification
from events.topics import Topics

__all__ = [
    "AlreadyExists", "AnyEnvelope", "Conflict", "Consumer", "Envelope", "EventBus", "Forbidden", "Health",
    "InvalidInput", "Lifecycle", "Message", "NotConnected", "NotFound", "PAYLOAD_TYPES", "Payload",
    "PermanentError", "PoisonMessage", "SluiceError", "Topics", "TransientError", "Unauthorized",
    "decode", "encode", "make", "parse_bucket_notification", "peek_type", *PAYLOAD_TYPES,
]
