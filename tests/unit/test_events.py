"""The events contract: envelope, codec, topics and bucket-notification parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from events import (
    PAYLOAD_TYPES,
    Envelope,
    IngestCompleted,
    ObjectCreated,
    PluginScanned,
    PoisonMessage,
    Topics,
    decode,
    encode,
    make,
    parse_bucket_notification,
    peek_type,
)
from events.payloads import Finding, ObjectRef, ObjectRemoved

pytestmark = pytest.mark.unit
SAMPLES = Path(__file__).parent.parent / "events"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_every_payload_type_round_trips_through_the_codec_with_its_envelope():
    payload = IngestCompleted(
        task_id="t1", collection_id="c1", status="COMPLETED_WITH_ERRORS", objects=2, documents_written=7,
        vectors_upserted={"emb": 7}, rows_failed=1, failures=[{"object_id": "o", "step": "embed", "error": "boom"}],
    )
    event = make(payload, namespace="acme")
    decoded = decode(encode(event))
    assert decoded == event
    assert decoded.type == "IngestCompleted" and isinstance(decoded.payload, IngestCompleted)
    assert decoded.schema_version == 1
    assert set(PAYLOAD_TYPES) >= {
        "PluginUploadConfirmed", "PluginScanned", "PluginRegistered", "PluginDeploymentChanged",
        "ModelUploadConfirmed", "ModelRegistered", "ModelDeployed", "ObjectCreated",
        "IngestStarted", "IngestProgress", "IngestCompleted", "IngestFailed",
    }


def test_a_child_event_keeps_the_correlation_and_names_its_cause():
    root = make(ObjectCreated(bucket="b", key="k", size=1, source="upload"), namespace="acme")
    child = root.child(PluginScanned(
        upload_id="u", plugin_name="p", version="1.0.0", archive=ObjectRef(bucket="b", key="k"), sha256="0" * 64,
        passed=False, findings=[Finding(rule_id="SLU001", severity="error", file="a.py", line=3, message="m")],
    ))
    assert child.correlation_id == root.correlation_id
    assert child.causation_id == root.event_id
    assert child.namespace == "acme" and child.event_id != root.event_id


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "Invalid JSON"),
        (b'{"payload": {"type": "NoSuchEvent"}}', "NoSuchEvent"),
        (b'{"payload": {"type": "ObjectCreated", "bucket": "b", "key": "k", "size": -1, "source": "s3"}}', "payload.ObjectCreated.size"),
        (b'{"payload": {"type": "ObjectCreated", "bucket": "b", "key": "k", "size": 1, "source": "s3", "extra": 1}}', "extra"),
        (
            b'{"type": "IngestFailed", "payload": {"type": "ObjectCreated", "bucket": "b", "key": "k", "size": 1, "source": "s3"}}',
            "does not match",
        ),
    ],
)
def test_undecodable_bytes_raise_poison_naming_the_problem(raw, fragment):
    with pytest.raises(PoisonMessage) as info:
        decode(raw)
    assert fragment in str(info.value) or fragment in json.dumps(info.value.details)


def test_peek_type_reads_the_type_without_validating():
    event = make(ObjectCreated(bucket="b", key="k", size=1, source="drop"))
    assert peek_type(encode(event)) == "ObjectCreated"
    assert peek_type(b"\xff\xfe") is None


def test_each_event_type_has_one_topic_under_the_prefix():
    topics = Topics("t-123")
    assert topics.for_type("PluginScanned") == "t-123.plugins"
    assert topics.for_type("IngestCompleted") == "t-123.ingest"
    assert topics.for_type("DeployPlugin") == topics.for_type("PluginDeploymentChanged")
    assert {topics.for_type(t) for t in PAYLOAD_TYPES if t != "BucketNotification"} <= set(topics.lifecycle())
    assert topics.for_type("BucketNotification") == topics.s3_notifications not in topics.lifecycle()
    assert topics.dead_letters in topics.all() and topics.s3_notifications in topics.all()
    with pytest.raises(KeyError, match="Nope"):
        topics.for_type("Nope")


def test_aws_put_notification_becomes_object_created_with_decoded_key_and_dedup_fields():
    [obj] = parse_bucket_notification(sample("s3_object_created_put.json"))
    assert obj.bucket == "acme-docs"
    assert obj.key == "reports/2026/q3 summaryé.txt"
    assert obj.size == 1024
    assert obj.etag == "d41d8cd98f00b204e9800998ecf8427e"
    assert obj.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert obj.sequencer == "0055AED6DCD90281E5"
    assert obj.source == "s3"
    assert obj.event_time is not None and obj.event_time.year == 2026
    assert obj.dedup_key == "acme-docs/reports/2026/q3 summaryé.txt@096fKKXTRTtl3on89fVO.nfljtsv6qko"


def test_minio_notification_with_s3_prefixed_event_name_is_parsed():
    [obj] = parse_bucket_notification(sample("minio_object_created_put.json"))
    assert obj.source == "minio"
    assert obj.key == "notes/meeting notes.md"
    assert obj.etag == "5eb63bbbe01eeed093cb22bb8f5acdc3"  # quotes stripped
    assert obj.content_type == "text/markdown"
    assert obj.version_id is None and obj.sequencer == "1876A1B2C4F00A11"


def test_multipart_and_copy_records_are_both_object_created():
    objs = parse_bucket_notification(sample("s3_multipart_and_copy.json"))
    assert [o.key for o in objs] == ["videos/big.mp4", "videos/copy.mp4"]
    assert objs[0].size == 734003200


def test_removals_parse_as_object_removed_and_test_events_yield_nothing():
    [removed] = parse_bucket_notification(sample("s3_object_removed_delete.json"))
    assert isinstance(removed, ObjectRemoved)
    assert (removed.bucket, removed.key, removed.sequencer, removed.source) == ("acme-docs", "reports/old.txt", "0055AED6DCD90281F0", "s3")
    assert parse_bucket_notification(sample("s3_test_event.json")) == []


def test_redelivered_notification_has_the_same_dedup_key():
    first = parse_bucket_notification(sample("s3_object_created_put.json"))[0]
    again = parse_bucket_notification(json.loads(sample("s3_object_created_put.json")))[0]
    assert first.dedup_key == again.dedup_key


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (b"{nope", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"Records": 3}', "Records"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}', "Records[0]"),
        (
            b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "size": "big"}}}]}',
            "Records[0]",
        ),
    ],
)
def test_malformed_notifications_are_poison_naming_the_record(document, fragment):
    with pytest.raises(PoisonMessage, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_bucket_notification(document)


def test_envelope_is_immutable():
    event = make(ObjectCreated(bucket="b", key="k", size=1, source="cli"))
    with pytest.raises(ValidationError):
        event.namespace = "other"  # type: ignore[misc]
    assert isinstance(event, Envelope)
