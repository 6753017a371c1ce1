"""scan: `PluginUploadConfirmed` → `PluginScanned`.

Downloads the archive into a private scratch folder, refuses archive attacks by name, and runs
the AST security scanner over every file. Nothing in the archive is imported or executed here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from engine.plugins.archive import ArchiveRejected, extract_plugin
from engine.plugins.scanner import scan_directory
from events.envelope import AnyEnvelope, Envelope
from events.errors import NotFound
from events.payloads import Finding, PluginScanned, PluginUploadConfirmed
from functions.records.plugins import PluginCatalog
from functions.records.status import UploadStatus
from functions.runtime.scratch import scratch, sha256_file
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.settings import Settings

log = structlog.get_logger("sluice.scan")


def _scan(archive: Path, dest: Path, strict: bool) -> list[Finding]:
    dest.mkdir()
    try:
        extracted = extract_plugin(archive, dest)
    except ArchiveRejected as rejected:
        return list(rejected.findings)
    return list(scan_directory(extracted.root, strict=strict).findings)


async def handle(event: Envelope[PluginUploadConfirmed], *, store: ObjectStore, catalog: Catalog, settings: Settings) -> list[AnyEnvelope]:
    confirmed = event.payload
    ref = confirmed.archive
    with scratch(settings.scratch_dir, "scan-") as work:
        archive = work / "archive.zip"
        try:
            await store.download_file(ref.bucket, ref.key, archive)
        except NotFound:
            findings = [Finding(
                rule_id="SLU870", severity="error", file=ref.key, line=0,
                message=f"the uploaded archive s3://{ref.bucket}/{ref.key} no longer exists",
                hint="Upload the archive again and confirm the new upload.",
            )]
            digest = ""
        else:
            digest = sha256_file(archive)
            findings = await asyncio.to_thread(_scan, archive, work / "src", confirmed.strict)
    passed = not any(f.severity == "error" or confirmed.strict for f in findings)
    await PluginCatalog(catalog).update_upload(
        confirmed.upload_id,
        {"scan_findings": [f.model_dump() for f in findings], "sha256": digest},
        expect={"status": UploadStatus.CONFIRMED},
    )
    log.info("plugin.scanned", plugin=confirmed.plugin_name, version=confirmed.version, passed=passed, findings=len(findings))
    return [event.child(PluginScanned(
        upload_id=confirmed.upload_id, plugin_name=confirmed.plugin_name, version=confirmed.version,
        archive=ref, sha256=digest, passed=passed, findings=findings,
    ))]
