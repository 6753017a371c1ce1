"""What each event *is*: small payload models, one per lifecycle fact or command.

Facts are past tense (`PluginScanned`), commands imperative (`DeployPlugin`). Each payload carries
a literal `type` that the codec uses as the discriminator of one union.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectRef(BaseModel):
    """Where a blob lives in the object store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(description="Bucket name.", examples=["sluice-plugins"])
    key: str = Field(description="Object key, not URL-encoded.", examples=["acme/plugins/my_extractor/1.0.0.zip"])
    version_id: str | None = Field(default=None, description="Object version, when the store versions objects.")


class Finding(BaseModel):
    """One scanner or validator finding, printed as `file:line [rule_id] message (hint)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_id: str = Field(description="Stable rule identifier.", examples=["SLU101"])
    severity: Literal["error", "warning"] = Field(description="Errors fail the scan; warnings fail it in strict mode.")
    file: str = Field(description="Path inside the archive.", examples=["processors/core.py"])
    line: int = Field(ge=0, description="1-based line number, 0 when the finding is about the whole file.")
    message: str = Field(description="What is wrong.")
    hint: str = Field(default="", description="How to fix it.")


# --- plugins ---------------------------------------------------------------------------------

class PluginUploadConfirmed(_Payload):
    """The client PUT a plugin archive and confirmed the upload."""

    type: Literal["PluginUploadConfirmed"] = "PluginUploadConfirmed"
    upload_id: str = Field(description="Upload handle returned by the upload request.")
    plugin_name: str = Field(description="Plugin name.", examples=["my_extractor"])
    version: str = Field(description="Semantic version X.Y.Z.", examples=["1.0.0"])
    description: str | None = Field(default=None, description="Free text from the uploader.")
    archive: ObjectRef = Field(description="Where the uploaded zip lies.")
    strict: bool = Field(default=False, description="Treat scanner warnings as failures.")


class PluginScanned(_Payload):
    """The security scanner finished with an archive."""

    type: Literal["PluginScanned"] = "PluginScanned"
    upload_id: str = Field(description="Upload handle.")
    plugin_name: str = Field(description="Plugin name.")
    version: str = Field(description="Version scanned.")
    archive: ObjectRef = Field(description="The archive that was scanned.")
    sha256: str = Field(description="Digest of the archive bytes that were scanned.")
    passed: bool = Field(description="True when no finding blocks registration.")
    findings: list[Finding] = Field(default_factory=list, description="Every finding, errors first.")


class PluginRegistered(_Payload):
    """A scanned plugin version passed validation and is now active."""

    type: Literal["PluginRegistered"] = "PluginRegistered"
    plugin_id: str = Field(description="Catalog id of the plugin version.")
    plugin_name: str = Field(description="Plugin name.")
    version: str = Field(description="Registered version.")
    feature_uris: list[str] = Field(default_factory=list, examples=[["sluice://my_extractor@1.0.0/my_embedding"]])
    deployment_status: str = Field(default="NOT_DEPLOYED", description="Realtime deployment state.")


class PluginRegistrationFailed(_Payload):
    """A plugin version was refused by the scanner or the manifest validator; nothing was stored."""

    type: Literal["PluginRegistrationFailed"] = "PluginRegistrationFailed"
    upload_id: str = Field(description="Upload handle.")
    plugin_name: str = Field(description="Plugin name.")
    version: str = Field(description="Refused version.")
    errors: list[Finding] = Field(default_factory=list, description="Why it was refused.")


class DeployPlugin(_Payload):
    """Command: deploy (or redeploy) a plugin version's realtime endpoint."""

    type: Literal["DeployPlugin"] = "DeployPlugin"
    plugin_id: str = Field(description="Plugin version to deploy.")


class DeploymentStatus(StrEnum):
    """A plugin version's (or a model's) endpoint: QUEUED → PENDING → IN_PROGRESS → DEPLOYED | FAILED;
    NOT_DEPLOYED when it never was, was undeployed, or is batch-only."""

    QUEUED = "QUEUED"
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    DEPLOYED = "DEPLOYED"
    FAILED = "FAILED"
    NOT_DEPLOYED = "NOT_DEPLOYED"
    UNDEPLOYED = "UNDEPLOYED"


class PluginDeploymentChanged(_Payload):
    """A realtime deployment moved to a new status."""

    type: Literal["PluginDeploymentChanged"] = "PluginDeploymentChanged"
    plugin_id: str = Field(description="Plugin version.")
    status: DeploymentStatus = Field(description="The status it moved to.")
    error: str | None = Field(default=None, description="Why it failed, with the last log lines.")


# --- models ----------------------------------------------------------------------------------

ModelFormat = Literal["pytorch", "safetensors", "onnx", "huggingface"]


class ModelUploadConfirmed(_Payload):
    """Model weights were uploaded and confirmed; validation comes next."""

    type: Literal["ModelUploadConfirmed"] = "ModelUploadConfirmed"
    model_id: str = Field(description="`{name}_{major}_{minor}_{patch}`.", examples=["my_bert_1_0_0"])
    model_format: ModelFormat = Field(description="How the weights are stored.")
    archive: ObjectRef = Field(description="The uploaded .tar.gz.")


class ModelRegistered(_Payload):
    """Model weights passed validation and are registered."""

    type: Literal["ModelRegistered"] = "ModelRegistered"
    model_id: str = Field(description="Model id.")
    model_format: ModelFormat = Field(description="How the weights are stored.")
    sha256: str = Field(description="Digest of the validated archive.")


class ModelRejected(_Payload):
    """Model weights failed validation; nothing was registered."""

    type: Literal["ModelRejected"] = "ModelRejected"
    model_id: str = Field(description="Model id.")
    errors: list[Finding] = Field(default_factory=list, description="File and reason for each failure.")


class ModelDeployed(_Payload):
    """Model weights are held in the Ray object store."""

    type: Literal["ModelDeployed"] = "ModelDeployed"
    model_id: str = Field(description="Model id.")
    cached: bool = Field(description="True when the weights are resident in the object store.")
    deployment_status: str = Field(default="DEPLOYED", description="Deployment state.")


# --- objects and ingest ----------------------------------------------------------------------

class ObjectCreated(_Payload):
    """An object landed in a bucket (S3/MinIO notification, upload confirm, or drop folder)."""

    type: Literal["ObjectCreated"] = "ObjectCreated"
    bucket: str = Field(description="Bucket name.", examples=["docs"])
    key: str = Field(description="Object key, URL-decoded.", examples=["reports/q1 summary.txt"])
    size: int = Field(ge=0, description="Size in bytes.")
    etag: str | None = Field(default=None, description="Entity tag without quotes.")
    version_id: str | None = Field(default=None, description="Object version id, when versioned.")
    sequencer: str | None = Field(default=None, description="S3 sequencer: orders events for one key.")
    content_type: str | None = Field(default=None, description="MIME type, when known.")
    event_time: datetime | None = Field(default=None, description="When the store saw the write.")
    source: Literal["s3", "minio", "upload", "drop", "cli", "backfill"] = Field(
        description="How Sluice learned of it (`backfill`: listed in the bucket when a collection was created or reingested).")

    @property
    def version_marker(self) -> str:
        """What tells this version of the object from another: version id, else etag, else
        sequencer, else size."""
        return self.version_id or self.etag or self.sequencer or str(self.size)

    @property
    def dedup_key(self) -> str:
        """Same object version ⇒ same key: redelivered notifications collapse to one."""
        return f"{self.bucket}/{self.key}@{self.version_marker}"


class ObjectRemoved(_Payload):
    """An object was deleted from a bucket (S3/MinIO notification, drop folder, or REST `DELETE`):
    its documents and points go from every collection that ingested it."""

    type: Literal["ObjectRemoved"] = "ObjectRemoved"
    bucket: str = Field(description="Bucket name.", examples=["docs"])
    key: str = Field(description="Object key, URL-decoded.", examples=["reports/q1 summary.txt"])
    version_id: str | None = Field(default=None, description="The deleted version, when versioned.")
    sequencer: str | None = Field(default=None, description="S3 sequencer: orders events for one key.")
    event_time: datetime | None = Field(default=None, description="When the store saw the delete.")
    source: Literal["s3", "minio", "drop", "rest"] = Field(description="How Sluice learned of it.")


class ObjectPurged(_Payload):
    """What removing an object took out of the stores: counts the stores acknowledged."""

    type: Literal["ObjectPurged"] = "ObjectPurged"
    bucket: str = Field(description="Bucket name.")
    key: str = Field(description="Object key.")
    object_id: str = Field(description="The object's id.")
    collections: list[str] = Field(default_factory=list, description="Collections that held documents of the object.")
    documents_deleted: int = Field(ge=0, description="Documents removed from the catalog.")
    vectors_deleted: dict[str, int] = Field(default_factory=dict, description="Points removed, per collection.")
    skipped: str | None = Field(default=None, description="Why nothing was removed (a newer version of the key exists).")
    entries_dropped: int = Field(default=0, ge=0, description="Queued, not yet claimed ingest entries of the object that were dropped.")


class BackfillCollection(_Payload):
    """Command: queue for ingest every object already in a collection's bucket (under its prefix), as
    `ObjectCreated` would; sent when a collection is created and by `POST .../reingest`. Progress and
    counts go to the backfill record (kind `backfills`)."""

    type: Literal["BackfillCollection"] = "BackfillCollection"
    backfill_id: str = Field(description="The backfill record this run reports to.", examples=["bkf_3f2a9c0d1e4b5a6c7d8e"])
    collection_id: str = Field(description="Collection whose bucket is listed.", examples=["col_8e1f0c2b3a4d5e6f7a8b"])
    force: bool = Field(default=False, description="Queue object versions already ingested as well (reingest); a version "
                        "queued or being ingested now is never queued twice.")


class BucketNotification(_Payload):
    """A raw S3 / MinIO notification as read from its topic: never published, only decoded there
    (`events.s3.decode_notification`), so the notifications function can map each object to its
    namespace."""

    type: Literal["BucketNotification"] = "BucketNotification"
    objects: list[ObjectCreated] = Field(default_factory=list, description="Every object-created record.")
    removed: list[ObjectRemoved] = Field(default_factory=list, description="Every object-removed record.")


class IngestFailure(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    object_id: str = Field(description="Source object.")
    step: str = Field(description="Pipeline step that raised, or `write`.")
    error: str = Field(description="The error, one line.")


class IngestStarted(_Payload):
    type: Literal["IngestStarted"] = "IngestStarted"
    task_id: str = Field(description="Durable task id.")
    collection_id: str = Field(description="Target collection.")
    objects: int = Field(ge=0, description="Objects in this job.")


class IngestProgress(_Payload):
    type: Literal["IngestProgress"] = "IngestProgress"
    task_id: str = Field(description="Durable task id.")
    rows_done: int = Field(ge=0)
    rows_total: int = Field(ge=0)


class IngestCompleted(_Payload):
    """The job finished; counts are what the stores acknowledged."""

    type: Literal["IngestCompleted"] = "IngestCompleted"
    task_id: str = Field(description="Durable task id.")
    collection_id: str = Field(description="Target collection.")
    status: Literal["COMPLETED", "COMPLETED_WITH_ERRORS"] = Field(description="Outcome.")
    objects: int = Field(ge=0, description="Objects processed.")
    documents_written: int = Field(ge=0, description="Documents the catalog acknowledged.")
    vectors_upserted: dict[str, int] = Field(default_factory=dict, description="Points acknowledged per index.")
    rows_failed: int = Field(ge=0, default=0)
    failures: list[IngestFailure] = Field(default_factory=list)


class IngestFailed(_Payload):
    type: Literal["IngestFailed"] = "IngestFailed"
    task_id: str = Field(description="Durable task id.")
    collection_id: str = Field(description="Target collection.")
    reason: str = Field(description="Why nothing (or not enough) was written.")
    failures: list[IngestFailure] = Field(default_factory=list)


Payload = Annotated[
    PluginUploadConfirmed
    | PluginScanned
    | PluginRegistered
    | PluginRegistrationFailed
    | DeployPlugin
    | PluginDeploymentChanged
    | ModelUploadConfirmed
    | ModelRegistered
    | ModelRejected
    | ModelDeployed
    | ObjectCreated
    | ObjectRemoved
    | ObjectPurged
    | BackfillCollection
    | BucketNotification
    | IngestStarted
    | IngestProgress
    | IngestCompleted
    | IngestFailed,
    Field(discriminator="type"),
]

PAYLOAD_TYPES: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        PluginUploadConfirmed, PluginScanned, PluginRegistered, PluginRegistrationFailed, DeployPlugin,
        PluginDeploymentChanged, ModelUploadConfirmed, ModelRegistered, ModelRejected, ModelDeployed,
        ObjectCreated, ObjectRemoved, ObjectPurged, BackfillCollection, BucketNotification, IngestStarted, IngestProgress,
        IngestCompleted, IngestFailed,
    )
}
