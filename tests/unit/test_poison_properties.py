"""Property tests: whatever bytes arrive, the runner finishes each message (`ok`, `skipped`, or
with dead letters that say why), never raises, never retries forever, and still handles the good
message behind it. Inputs: S3 notifications whose fields are mutated to random JSON values, random
bytes, and valid envelopes with random mutations; all through the real `Runner.process` on the
memory bus (the notifications row with its real decoder and handler)."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import ObjectCreated, Topics, codec, decode, make
from events import dead_letters as dlq
from events.bus import Message
from events.payloads import IngestStarted
from functions.records.collection import ensure_bucket
from functions.runtime.runner import Function, RetryPolicy, Runner
from functions.table import FUNCTIONS
from infra.bus.memory import InMemoryBus
from infra.catalog.memory import MemoryCatalog
from infra.settings import Settings

pytestmark = pytest.mark.unit
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_delay_s=0.002)
SETTINGS = Settings(bus="memory", compute="none", admin_key="sk_admin_" + "x" * 32)
NOTIFICATIONS = next(f for f in FUNCTIONS if f.name == "notifications")
OUTCOMES = {"ok", "skipped", "dead_lettered"}
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.text(alphabet="ab/%+2fF \u00e9\ud800", max_size=10)  # escapes, broken escapes, a lone surrogate
PATHS = [(), ("eventName",), ("eventTime",), ("eventSource",), ("s3",), ("s3", "bucket"), ("s3", "bucket", "name"),
         ("s3", "object"), ("s3", "object", "key"), ("s3", "object", "size"), ("s3", "object", "eTag"),
         ("s3", "object", "versionId"), ("s3", "object", "sequencer"), ("s3", "object", "contentType")]


def skeleton(key: str = "a.txt", event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {"eventSource": "aws:s3", "eventTime": "2026-11-20T14:05:42.117Z", "eventName": event,
            "s3": {"bucket": {"name": SETTINGS.data_bucket},
                   "object": {"key": f"acme/docs/{key}", "size": 5, "eTag": '"abc"', "sequencer": "0A"}}}


@st.composite
def mutated_record(draw: st.DrawFn) -> Any:
    record: Any = skeleton(event=draw(st.sampled_from(["ObjectCreated:Put", "s3:ObjectCreated:Copy", "ObjectRemoved:Delete"])))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        value = draw(JSON | KEYS) if path[-1:] == ("key",) else draw(JSON)
        if not path:
            record = value
            continue
        parent = record
        for step in path[:-1]:
            parent = parent.get(step) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            if draw(st.booleans()):
                parent[path[-1]] = value
            else:
                parent.pop(path[-1], None)
    return record


@st.composite
def notification(draw: st.DrawFn) -> bytes:
    document: Any = {"Records": draw(st.lists(mutated_record(), min_size=1, max_size=3))}
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        document = draw(JSON)  # now and then, not a notification at all
    elif draw(st.booleans()):
        document["EventName"] = "s3:ObjectCreated:Put"  # MinIO's top level
    text = json.dumps(document)
    return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text.encode()


@st.composite
def mutated_envelope(draw: st.DrawFn) -> bytes:
    event = make(ObjectCreated(bucket="docs", key="k.txt", size=1, source="drop"), namespace="acme")
    document: Any = json.loads(codec.encode(event))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        payload = document.get("payload")
        target = draw(st.sampled_from([document, payload] if isinstance(payload, dict) else [document]))
        field = draw(st.sampled_from([*target, "extra"]))
        if draw(st.booleans()):
            target[field] = draw(JSON)
        else:
            target.pop(field, None)
    return json.dumps(document).encode()


def good_notification() -> bytes:
    return json.dumps({"Records": [skeleton("good.txt")]}).encode()


async def answer(event):
    return [event.child(IngestStarted(task_id=event.payload.key, collection_id="c", objects=1))]


async def through_the_runner(fn: Function, value: bytes, good: bytes) -> tuple[str, str, list[Message], InMemoryBus, Topics]:
    """`value`, then `good`, through `Runner.process`; (outcome, good's outcome, dead letters, bus, topics)."""
    topics = Topics(f"p{uuid.uuid4().hex[:8]}")
    async with InMemoryBus() as bus, MemoryCatalog() as catalog:
        await ensure_bucket(catalog, "acme", "docs")
        await bus.ensure_topics(topics.all())
        runner = Runner(bus=bus, topics=topics, functions=[fn], deps={"catalog": catalog, "settings": SETTINGS}, retry=FAST)
        topic = fn.topic_in(topics)
        outcome = await asyncio.wait_for(runner.process(fn, Message(topic, 0, 0, value, key=b"k")), timeout=10)
        after = await asyncio.wait_for(runner.process(fn, Message(topic, 0, 1, good, key=b"k")), timeout=10)
        return outcome, after, bus.published(topics.dead_letters), bus, topics


def records_in(value: bytes) -> int:
    try:
        document = json.loads(value)
    except ValueError:
        return 0
    records = document.get("Records") if isinstance(document, dict) else None
    return len(records) if isinstance(records, list) else 0


def check_dead_letters(value: bytes, letters: list[Message]) -> None:
    for letter in letters:
        assert letter.header(dlq.ERROR) and letter.header(dlq.ERROR_TYPE), letter.headers  # every one says why
        assert letter.header(dlq.SOURCE_OFFSET) == b"0" and letter.key == b"k"
        if letter.header(dlq.RECORD_INDEX) is None:
            assert letter.value == value  # the whole message, as it came
        else:
            alone = json.loads(letter.value)
            assert isinstance(alone, dict) and list(alone) == ["Records"] and len(alone["Records"]) == 1


@EXAMPLES
@given(notification())
def test_any_notification_ends_handled_or_dead_lettered_with_a_reason_and_the_next_one_is_handled(value):
    outcome, after, letters, bus, topics = asyncio.run(through_the_runner(NOTIFICATIONS, value, good_notification()))
    assert outcome in OUTCOMES
    assert outcome != "dead_lettered" or letters
    check_dead_letters(value, letters)
    assert len(letters) <= max(1, records_in(value))  # one per bad record, or one for the whole message
    assert after == "ok"
    assert any(decode(m.value).payload.key == "good.txt" for m in bus.published(topics.objects))


@EXAMPLES
@given(st.binary(max_size=64) | mutated_envelope() | notification())
def test_any_bytes_on_an_event_topic_end_ok_skipped_or_dead_lettered_and_the_next_event_is_handled(value):
    fn = Function("answer", answer, frozenset({"ObjectCreated"}))
    good = make(ObjectCreated(bucket="docs", key="good.txt", size=1, source="drop"), namespace="acme")
    outcome, after, letters, bus, topics = asyncio.run(through_the_runner(fn, value, codec.encode(good)))
    assert outcome in OUTCOMES
    assert (outcome == "dead_lettered") == bool(letters) and len(letters) <= 1
    check_dead_letters(value, letters)
    assert after == "ok"
    assert decode(bus.published(topics.ingest)[-1].value).causation_id == good.event_id


@settings(max_examples=40, deadline=None)
@given(st.lists(mutated_record(), min_size=1, max_size=4))
def test_rejected_records_replayed_alone_decode_to_the_same_verdict(records):
    """A reject's bytes, decoded alone, are rejected again (never silently handled): replaying a
    dead letter reproduces its error until its cause is fixed."""
    from events.s3 import decode_notification

    value = json.dumps({"Records": copy.deepcopy(records)}).encode()
    decoded = decode_notification(value)
    if not isinstance(decoded, dlq.Decoded):
        return
    for reject in decoded.rejects:
        again = decode_notification(reject.value)
        assert isinstance(again, dlq.Decoded) and again.envelope is None and len(again.rejects) == 1
        assert type(again.rejects[0].error) is type(reject.error)
