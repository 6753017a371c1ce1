"""validate_model: `ModelUploadConfirmed` -> `ModelRegistered` | `ModelRejected`.

`handle` (ModelUploadConfirmed → ModelRegistered | ModelRejected) downloads the upload into a
private scratch folder and runs `engine.models.validate.validate_model_archive` in a worker thread
under a time limit (the validator never executes archive content: pickles are scanned as opcodes,
ONNX external data is checked lexically, Hugging Face code is refused). The catalog is the source
of truth: REST polls the record, so the outcome reaches clients whether the function runs in the
same process or another.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import structlog

from engine.models.validate import ModelLimits, ValidatedModel, validate_model_archive
from engine.models.validate import ModelRejected as ArchiveRejected
from events.envelope import AnyEnvelope, Envelope
from events.errors import NotFound
from events.payloads import ModelRegistered, ModelRejected, ModelUploadConfirmed
from functions.records.models import (
    ARCHIVE_CONTENT_TYPE,
    MODELS,
    RULE_MISSING,
    RULE_TIMEOUT,
    ModelRegistry,
    as_event_findings,
    describe_finding,
    finding_dict,
    model_key,
    now,
    plain_json,
    problem,
    validation_timeout_s,
)
from functions.records.status import MODEL_TERMINAL, ModelStatus
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.settings import Settings

log = structlog.get_logger("sluice.models")


def _remove_when_done(task: asyncio.Future | None, work: Path) -> None:
    def remove(finished: asyncio.Future | None = None) -> None:
        if finished is not None and not finished.cancelled():
            finished.exception()  # retrieved: a late failure is not an unhandled-exception warning
        shutil.rmtree(work, ignore_errors=True)

    if task is None or task.done():
        remove(task)
    else:
        task.add_done_callback(remove)


async def _reject(event: AnyEnvelope, registry: ModelRegistry, store: ObjectStore, record: dict, errors: list[dict]) -> list[AnyEnvelope]:
    namespace, model_id = record["namespace"], record["model_id"]
    changed = await registry.update(namespace, model_id, {"status": ModelStatus.REJECTED, "errors": errors, "finished_at": now()},
                                    expect={"status": ModelStatus.VALIDATING, "upload_id": record["upload_id"]})
    await _drop_upload(store, record)
    if changed is None:
        return []  # deleted (or replaced) while validating: nothing to report for this upload
    log.info("model.rejected", namespace=namespace, model_id=model_id, errors=len(errors), first=describe_finding(errors[0]))
    return [event.child(ModelRejected(model_id=model_id, errors=as_event_findings(errors)))]


async def _drop_upload(store: ObjectStore, record: dict) -> None:
    upload = record.get("upload") or {}
    if upload.get("key") and upload.get("key") != record["archive"]["key"]:
        try:
            await store.delete(upload["bucket"], upload["key"])
        except Exception as exc:  # noqa: BLE001 - a leftover upload is harmless; the outcome is recorded
            log.warning("model.upload_cleanup_failed", key=upload["key"], error=str(exc))


def _outcome(event: AnyEnvelope, record: dict) -> list[AnyEnvelope]:
    """The recorded outcome as an event again (a redelivery emits what the first run emitted)."""
    if record["status"] == ModelStatus.REGISTERED:
        return [event.child(ModelRegistered(model_id=record["model_id"], model_format=record["model_format"], sha256=record["sha256"]))]
    return [event.child(ModelRejected(model_id=record["model_id"], errors=as_event_findings(record.get("errors") or [])))]


async def handle(event: Envelope[ModelUploadConfirmed], *, catalog: Catalog, store: ObjectStore, settings: Settings) -> list[AnyEnvelope]:
    """ModelUploadConfirmed → ModelRegistered | ModelRejected (see the module docstring)."""
    confirmed = event.payload
    namespace = event.namespace or ""
    registry = ModelRegistry(catalog)
    record = await catalog.get(MODELS, model_key(namespace, confirmed.model_id))
    if record is None or (record.get("upload") or {}).get("key") != confirmed.archive.key:
        log.info("model.confirm_stale", namespace=namespace, model_id=confirmed.model_id)
        return []  # deleted, or replaced by a newer upload of the same version: this upload is moot
    if record["status"] in MODEL_TERMINAL:
        await _drop_upload(store, record)
        return _outcome(event, record)
    if record["status"] != ModelStatus.VALIDATING:
        return []  # not confirmed (cannot happen through REST): nothing to validate yet

    ref = confirmed.archive
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="model-validate-", dir=settings.scratch_dir))
    task: asyncio.Future | None = None
    try:
        archive = work / "model.tar.gz"
        try:
            await store.download_file(ref.bucket, ref.key, archive)
        except NotFound:
            return await _reject(event, registry, store, record, [problem(
                RULE_MISSING, f"the uploaded archive s3://{ref.bucket}/{ref.key} no longer exists; upload it again")])
        size = archive.stat().st_size
        limits = ModelLimits(max_archive_bytes=settings.models_max_archive_bytes)
        timeout_s = validation_timeout_s(settings, size)
        task = asyncio.ensure_future(asyncio.to_thread(validate_model_archive, archive, work / "model", confirmed.model_format, limits))
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            return await _reject(event, registry, store, record, [problem(
                RULE_TIMEOUT, f"validation took longer than {timeout_s:.0f} s and was abandoned; nothing was registered")])
        try:
            validated = task.result()
        except ArchiveRejected as rejected:
            return await _reject(event, registry, store, record, [finding_dict(f) for f in rejected.findings])
        return await _register(event, registry, store, settings, record, archive, validated, size)
    finally:
        _remove_when_done(task, work)


async def _register(event: AnyEnvelope, registry: ModelRegistry, store: ObjectStore, settings: Settings, record: dict,
                    archive: Path, validated: ValidatedModel, size: int) -> list[AnyEnvelope]:
    """Copy the validated bytes to the final key, then mark the record REGISTERED."""
    namespace, model_id = record["namespace"], record["model_id"]
    final = record["archive"]
    await store.ensure_bucket(final["bucket"])
    await store.put_file(final["bucket"], final["key"], archive, content_type=ARCHIVE_CONTENT_TYPE)
    changed = await registry.update(namespace, model_id, {
        "status": ModelStatus.REGISTERED, "errors": [], "sha256": validated.sha256, "size_bytes": size, "files": validated.files,
        "details": plain_json(validated.details), "total_bytes": validated.total_bytes, "registered_at": now(),
        "finished_at": now(),
    }, expect={"status": ModelStatus.VALIDATING, "upload_id": record["upload_id"]})
    if changed is None:  # deleted while validating: take the copy back
        await store.delete(final["bucket"], final["key"])
        await _drop_upload(store, record)
        log.info("model.deleted_while_validating", namespace=namespace, model_id=model_id)
        return []
    await _drop_upload(store, record)
    log.info("model.registered", namespace=namespace, model_id=model_id, format=validated.model_format,
             files=len(validated.files), bytes=size)
    return _outcome(event, changed)
