"""register: `PluginScanned` → `PluginRegistered` or `PluginRegistrationFailed`.

Only a passed scan goes further. The archive is fetched again and must have the digest that was
scanned (an upload URL stays valid for a while, so the object could have been replaced). The
manifest check and dry run execute plugin code, so they run in a subprocess
(`engine.plugins.validate.validate_isolated`), never here. The verified bytes are then copied to
the version's own key, which no presigned URL can write, and the version becomes active.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from engine.plugins.archive import ArchiveRejected, extract_plugin
from engine.plugins.validate import ValidationReport, validate_isolated
from events.envelope import AnyEnvelope, Envelope
from events.errors import Conflict, NotFound
from events.payloads import Finding, PluginRegistered, PluginRegistrationFailed, PluginScanned
from functions.records.plugins import HEADS, UPLOADS, VERSIONS, PluginCatalog, archive_key, head_key, now, plugin_id_for
from functions.records.secret_store import SecretsStore
from functions.records.status import UploadStatus
from functions.runtime.scratch import scratch, sha256_file
from functions.services.ingest import sandbox_options
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.settings import Settings

log = structlog.get_logger("sluice.register")


def _problem(rule_id: str, message: str, hint: str) -> Finding:
    return Finding(rule_id=rule_id, severity="error", file="", line=0, message=message, hint=hint)


async def _fail(
    event: AnyEnvelope, plugins: PluginCatalog, scanned: PluginScanned, errors: list[Finding]
) -> list[AnyEnvelope]:
    await plugins.update_upload(scanned.upload_id, {
        "status": UploadStatus.FAILED, "finished_at": now(),
        "validation_errors": [f.model_dump() for f in errors if f.severity == "error"] or [f.model_dump() for f in errors],
        "warnings": [f.model_dump() for f in errors if f.severity == "warning"],
    })
    log.info("plugin.refused", plugin=scanned.plugin_name, version=scanned.version, errors=len(errors))
    return [event.child(PluginRegistrationFailed(
        upload_id=scanned.upload_id, plugin_name=scanned.plugin_name, version=scanned.version, errors=errors,
    ))]


PluginValidator = Callable[..., Awaitable[ValidationReport]]
"""Runs the manifest check and dry run of an extracted plugin (`validate_isolated`: in a plugin host)."""


async def handle(
    event: Envelope[PluginScanned], *, store: ObjectStore, catalog: Catalog, settings: Settings,
    validate: PluginValidator = validate_isolated,
) -> list[AnyEnvelope]:
    scanned = event.payload
    plugins = PluginCatalog(catalog)
    upload = await catalog.get(UPLOADS, scanned.upload_id)
    if upload is None:
        raise NotFound(f"upload {scanned.upload_id!r} is not in the catalog")
    if upload["status"] == UploadStatus.FAILED:
        return []  # already refused: a redelivery has nothing to add
    if not scanned.passed:
        return await _fail(event, plugins, scanned, list(scanned.findings))
    namespace, name, version = upload["namespace"], scanned.plugin_name, scanned.version
    plugin_id = plugin_id_for(namespace, name, version)
    with scratch(settings.scratch_dir, "register-") as work:
        archive = work / "archive.zip"
        try:
            await store.download_file(scanned.archive.bucket, scanned.archive.key, archive)
        except NotFound:
            existing = await catalog.get(VERSIONS, plugin_id)
            if existing is None or existing.get("sha256") != scanned.sha256:
                return await _fail(event, plugins, scanned, [_problem(
                    "SLU870", "the uploaded archive no longer exists", "Upload the archive again and confirm the new upload.")])
            outcome: list[Finding] | tuple[dict, bool] = (existing, False)  # registered already; the upload is gone
        else:
            outcome = await _register_archive(archive, work, upload, scanned, plugin_id, store=store, catalog=catalog,
                                              settings=settings, validate=validate)
    if isinstance(outcome, list):
        return await _fail(event, plugins, scanned, outcome)
    record, created = outcome
    head = await catalog.get(HEADS, head_key(namespace, name))
    activated_before = head is not None and any(h["plugin_id"] == plugin_id for h in head.get("history", []))
    if created or not activated_before:
        await plugins.activate(namespace, name, plugin_id, reason="registered")
    warnings = [f for f in record["scan_report"]["findings"] if f["severity"] == "warning"]
    await plugins.update_upload(scanned.upload_id, {
        "status": UploadStatus.REGISTERED, "finished_at": now(), "plugin_id": plugin_id, "feature_uris": record["feature_uris"],
        "deployment_status": record["deployment_status"], "warnings": warnings, "validation_errors": [],
    })
    if scanned.archive.key != record["archive"]["key"]:
        try:
            await store.delete(scanned.archive.bucket, scanned.archive.key)
        except Exception as exc:  # noqa: BLE001 - the copy is what counts; a leftover upload is harmless
            log.warning("plugin.upload_cleanup_failed", key=scanned.archive.key, error=str(exc))
    log.info("plugin.registered", plugin=name, version=version, plugin_id=plugin_id, features=len(record["feature_uris"]))
    return [event.child(PluginRegistered(
        plugin_id=plugin_id, plugin_name=name, version=version, feature_uris=record["feature_uris"],
        deployment_status=record["deployment_status"],
    ))]


async def _register_archive(
    archive: Path, work: Path, upload: dict, scanned: PluginScanned, plugin_id: str, *, store: ObjectStore, catalog: Catalog,
    settings: Settings, validate: PluginValidator,
) -> list[Finding] | tuple[dict, bool]:
    """Check the downloaded archive is the one scanned, run the manifest check and dry run in a
    plugin host, copy the bytes to the version's own key and store the version: `(record,
    created)`, or the findings that refuse it."""
    namespace, name, version = upload["namespace"], scanned.plugin_name, scanned.version
    if sha256_file(archive) != scanned.sha256:
        return [_problem("SLU871", "the archive changed after it was scanned",
                         "Request a new upload; do not reuse an upload URL after confirming.")]
    src = work / "src"
    src.mkdir()
    try:
        extracted = await asyncio.to_thread(extract_plugin, archive, src)
    except ArchiveRejected as rejected:
        return list(rejected.findings)
    network_allow, network_findings = network_declaration(extracted.root)
    if any(f.severity == "error" for f in network_findings):
        return list(scanned.findings) + network_findings
    report = await validate(
        extracted.root, name=name, version=version, namespace=namespace, plugin_id=plugin_id,
        timeout_s=settings.plugin_validation_timeout_s, strict=bool(upload.get("strict")),
        context=await SecretsStore.from_settings(catalog, settings).context_for(namespace),
        options=sandbox_options(settings), network_allow=network_allow,
    )
    findings = list(scanned.findings) + network_findings + list(report.findings)
    if not report.passed or report.manifest is None:
        return findings
    key = archive_key(namespace, name, version)
    info = await store.put_file(settings.plugins_bucket, key, archive, content_type="application/zip")
    record = {
        "plugin_id": plugin_id, "namespace": namespace, "plugin_name": name, "version": version,
        "description": upload.get("description"), "upload_id": scanned.upload_id,
        "archive": {"bucket": settings.plugins_bucket, "key": key}, "sha256": scanned.sha256, "size_bytes": info.size,
        "files": extracted.files, "manifest": report.manifest.model_dump(mode="json"),
        "scan_report": {"passed": True, "findings": [f.model_dump() for f in findings]},
        "dry_runs": [d.model_dump() for d in report.dry_runs],
        "feature_uris": report.feature_uris, "has_realtime": report.has_realtime, "step_gpus": report.step_gpus,
        "network_allow": list(network_allow), "deployment_status": "NOT_DEPLOYED", "registered_at": now(),
    }
    try:
        return await PluginCatalog(catalog).add_version(record)
    except Conflict as exc:
        return [_problem("SLU872", exc.message, "Push a new version.")]


def network_declaration(root: Path) -> tuple[tuple[str, ...], list]:
    """The hosts manifest.py declares (`network = {"allow": [...]}`), read from its SOURCE by the
    trusted side: what the dry run reports is the plugin's word, this is the platform's."""
    from engine.plugins.manifest import read_network_declaration

    manifest = root / "manifest.py"
    if not manifest.is_file():
        return (), []
    return read_network_declaration(manifest.read_text(encoding="utf-8", errors="replace"))
