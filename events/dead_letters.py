"""Dead letters: what the runner writes to the dead-letter topic, and how it is read back.

A dead letter is the original bytes of a message that can never be handled, or of one record of
it (`Reject`: a bad record of an S3 notification, re-wrapped so it can be replayed alone), on
`{prefix}.dead-letters` with the message's key and `x-sluice-*` headers: which function gave up,
the error type and message, how many attempts it made, and where the bytes came from (source
topic, partition, offset, and the record index for a reject).

`read_dead_letter` turns such a message back into an envelope (`DeadLetter`) for the recorder
function (functions/handlers/dead_letters.py). It never raises: a message with missing or garbled
headers is still recorded, with what can be read. Its event id is derived from where the bytes came
from (source topic, partition, offset, function, record index), so a dead letter written twice (a
redelivery of its source) is recorded once.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import Envelope
from events.errors import PoisonMessage
from events.topics import Topics

if TYPE_CHECKING:
    from events.bus import Message
    from events.envelope import AnyEnvelope

FUNCTION = "x-sluice-function"
ERROR_TYPE = "x-sluice-error-type"
ERROR = "x-sluice-error"
SOURCE_TOPIC = "x-sluice-source-topic"
SOURCE_PARTITION = "x-sluice-source-partition"
SOURCE_OFFSET = "x-sluice-source-offset"
ATTEMPTS = "x-sluice-attempts"
RECORD_INDEX = "x-sluice-record-index"
"""Only on a reject: the index of the record in its message (`Records[i]` of a notification)."""
REPLAY_OF = "x-sluice-replay-of"
"""On a replayed message: the id of the dead letter it replays."""
ERROR_MAX_BYTES = 4096


@dataclass(frozen=True)
class Reject:
    """One record of a message that can never be handled. `value` is that record alone, as bytes
    its function decodes by themselves (so it can be dead-lettered and replayed on its own)."""

    value: bytes
    error: PoisonMessage
    index: int | None = None


@dataclass(frozen=True)
class Decoded:
    """What a decoder makes of a message with some bad records: the envelope of the good ones
    (None when none is good) and each rejected record."""

    envelope: AnyEnvelope | None
    rejects: Sequence[Reject] = field(default_factory=tuple)


def dead_letter_topic(topics: Topics) -> str:
    """The topic the recorder reads (a `Function.topic` for the handler table)."""
    return topics.dead_letters


def headers(*, function: str, error_type: str, error: str, source_topic: str, source_partition: int, source_offset: int,
            attempts: int, record_index: int | None = None) -> list[tuple[str, bytes]]:
    """The headers of one dead letter (the runner writes them; `read_dead_letter` reads them)."""
    out = [
        (FUNCTION, function.encode()),
        (ERROR_TYPE, error_type.encode()),
        (ERROR, error.encode(errors="replace")[:ERROR_MAX_BYTES]),
        (SOURCE_TOPIC, source_topic.encode()),
        (SOURCE_PARTITION, str(source_partition).encode()),
        (SOURCE_OFFSET, str(source_offset).encode()),
        (ATTEMPTS, str(attempts).encode()),
    ]
    if record_index is not None:
        out.append((RECORD_INDEX, str(record_index).encode()))
    return out


class DeadLetter(BaseModel):
    """One dead letter as read from the dead-letter topic: never published, only decoded there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["DeadLetter"] = "DeadLetter"
    function: str | None = Field(default=None, description="The function that gave up on the message.", examples=["register"])
    error_type: str | None = Field(default=None, description="The error's type.", examples=["poison_message"])
    error: str | None = Field(default=None, description="The error's message (at most 4 KiB).")
    attempts: int | None = Field(default=None, description="Handler runs before giving up (0: it never decoded).")
    source_topic: str | None = Field(default=None, description="Where the bytes were read.", examples=["sluice.plugins"])
    source_partition: int | None = Field(default=None, description="Partition of the source message.")
    source_offset: int | None = Field(default=None, description="Offset of the source message.")
    record_index: int | None = Field(default=None, description="For one rejected record of a message: its index.")
    namespace: str | None = Field(default=None, description="The envelope's namespace, when the bytes are one; else null.")
    key_b64: str | None = Field(default=None, description="The message key, base64.")
    value_b64: str = Field(description="The bytes that failed, base64: what a replay publishes again.")
    dead_letter_topic: str = Field(description="Where the dead letter itself was read.")
    dead_letter_partition: int = Field(description="Its partition.")
    dead_letter_offset: int = Field(description="Its offset.")
    timestamp_ms: int | None = Field(default=None, description="When the dead letter was written (broker time).")

    @property
    def value(self) -> bytes:
        return base64.b64decode(self.value_b64)

    @property
    def key(self) -> bytes | None:
        return base64.b64decode(self.key_b64) if self.key_b64 is not None else None


def _text(message: Message, name: str) -> str | None:
    raw = message.header(name)
    return raw.decode(errors="replace") if raw is not None else None


def _number(message: Message, name: str) -> int | None:
    text = _text(message, name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def namespace_of(value: bytes) -> str | None:
    """The namespace of an envelope's bytes; None for anything else (raw notifications, garbage)."""
    try:
        document: Any = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    namespace = document.get("namespace") if isinstance(document, dict) else None
    return namespace if isinstance(namespace, str) and namespace else None


def dead_letter_id(letter: DeadLetter) -> str:
    """Where the bytes came from, as an id: the same dead letter written twice gets one id. A
    message put on the topic without our headers is named by where it lies there instead."""
    if letter.source_topic is not None and letter.source_offset is not None:
        origin = [letter.source_topic, letter.source_partition, letter.source_offset, letter.function, letter.record_index]
    else:
        origin = ["dead-letter", letter.dead_letter_topic, letter.dead_letter_partition, letter.dead_letter_offset]
    return "dlq_" + hashlib.sha256(json.dumps(origin).encode()).hexdigest()[:32]


def read_dead_letter(message: Message) -> AnyEnvelope:
    """A message of the dead-letter topic as an `Envelope[DeadLetter]`; never raises."""
    letter = DeadLetter(
        function=_text(message, FUNCTION), error_type=_text(message, ERROR_TYPE), error=_text(message, ERROR),
        attempts=_number(message, ATTEMPTS), source_topic=_text(message, SOURCE_TOPIC),
        source_partition=_number(message, SOURCE_PARTITION), source_offset=_number(message, SOURCE_OFFSET),
        record_index=_number(message, RECORD_INDEX), namespace=namespace_of(message.value),
        key_b64=base64.b64encode(message.key).decode() if message.key is not None else None,
        value_b64=base64.b64encode(message.value).decode(), dead_letter_topic=message.topic,
        dead_letter_partition=message.partition, dead_letter_offset=message.offset, timestamp_ms=message.timestamp_ms,
    )
    return Envelope[DeadLetter](event_id=dead_letter_id(letter), payload=letter)


__all__ = ["DeadLetter", "Decoded", "Reject", "dead_letter_id", "dead_letter_topic", "headers", "namespace_of",
           "read_dead_letter"]
