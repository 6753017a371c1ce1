"""Every status a record can hold, one enum per kind of record.

They are `StrEnum`s: stored and sent as their plain names (`"FAILED"`), compared equal to them, so
records written before these enums existed read the same.
"""

from __future__ import annotations

from enum import StrEnum

from events.payloads import DeploymentStatus


class UploadStatus(StrEnum):
    """A plugin or object upload: AWAITING_UPLOAD → CONFIRMED (→ REGISTERED | FAILED for plugins: scan
    or register refused it), or EXPIRED when the upload sweeper found it unconfirmed past its URL's life."""

    AWAITING_UPLOAD = "AWAITING_UPLOAD"
    CONFIRMED = "CONFIRMED"
    SCANNED = "SCANNED"
    REGISTERED = "REGISTERED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class ModelStatus(StrEnum):
    """A model version: AWAITING_UPLOAD → VALIDATING → REGISTERED | REJECTED."""

    AWAITING_UPLOAD = "AWAITING_UPLOAD"
    VALIDATING = "VALIDATING"
    REGISTERED = "REGISTERED"
    REJECTED = "REJECTED"


class TaskStatus(StrEnum):
    """An ingest task: QUEUED → RUNNING → COMPLETED | COMPLETED_WITH_ERRORS | FAILED."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"


class BackfillStatus(StrEnum):
    """A backfill (a collection's bucket listed and queued for ingest): QUEUED → RUNNING → COMPLETED | FAILED."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


UPLOAD_TERMINAL = (UploadStatus.REGISTERED, UploadStatus.FAILED)
MODEL_TERMINAL = (ModelStatus.REGISTERED, ModelStatus.REJECTED)
DEPLOYMENT_IN_FLIGHT = frozenset({DeploymentStatus.QUEUED, DeploymentStatus.PENDING, DeploymentStatus.IN_PROGRESS})
TASK_FINISHED = (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS, TaskStatus.FAILED)

__all__ = ["BackfillStatus", "DEPLOYMENT_IN_FLIGHT", "DeploymentStatus", "MODEL_TERMINAL", "ModelStatus", "TASK_FINISHED", "TaskStatus",
           "UPLOAD_TERMINAL", "UploadStatus"]
