"""dead_letters: every message of the dead-letter topic → one record in the catalog (kind
`dead_letters`, functions/records/dead_letters.py), so operators can list, replay and discard them
(`/v1/admin/dead-letters`, `sluice events dlq`).

The runner decodes each message with `events.dead_letters.read_dead_letter`, which never raises and
names the record after where its bytes came from: a redelivered dead letter finds its record and
changes nothing. This function never writes to the topic it reads (the runner refuses to): a
transient failure (the catalog down) is retried until it passes.
"""

from __future__ import annotations

import structlog

from events.dead_letters import DeadLetter
from events.envelope import AnyEnvelope, Envelope
from functions.records.dead_letters import DeadLetters
from infra.catalog.base import Catalog

log = structlog.get_logger("sluice.dead_letters")


async def handle(event: Envelope[DeadLetter], *, catalog: Catalog) -> list[AnyEnvelope]:
    letter = event.payload
    if await DeadLetters(catalog).record(event.event_id, letter):
        log.info("dead_letter.recorded", dead_letter_id=event.event_id, source_function=letter.function,
                 error_type=letter.error_type, source_topic=letter.source_topic, source_offset=letter.source_offset,
                 record_index=letter.record_index)
    return []
