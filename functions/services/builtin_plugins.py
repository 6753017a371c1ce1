"""Builtin plugins (`engine/plugins/builtin/`), usable by name in every namespace.

The first collection of a namespace that names a builtin installs it there as an ordinary plugin
version: the folder zipped deterministically into the plugins bucket, its manifest summarised,
the version activated. From then on ingest and search treat it like any uploaded plugin (same
archive digest check, same workers), and `sluice plugin list` shows it. A namespace's own plugin
of the same name wins: the builtin is only installed where the name is free.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib

import structlog

from engine.plugins.archive import zip_plugin_folder
from engine.plugins.builtin import BUILTIN_PLUGINS, builtin_plugin_path
from engine.plugins.manifest import validate_manifest
from events.errors import NotFound
from functions.records.plugins import HEADS, VERSIONS, PluginCatalog, archive_key, head_key, now, plugin_id_for
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore

log = structlog.get_logger("sluice.builtins")


def builtin_archive(name: str) -> tuple[bytes, dict, str]:
    """(zip bytes, manifest summary, version) of builtin `name`. Its manifest is Sluice's own
    code, imported from the installed package, never from the zip."""
    path = builtin_plugin_path(name)
    module = importlib.import_module(f"engine.plugins.builtin.{name}.manifest")
    summary, findings = validate_manifest(module, expected_name=name)
    errors = [f for f in findings if f.severity == "error"]
    if summary is None or errors:
        raise RuntimeError(f"builtin plugin {name!r} has an invalid manifest: {[f.message for f in errors]}")
    version = str(summary.version or "1.0.0")
    return zip_plugin_folder(path, top=name), summary.model_dump(mode="json"), version


async def version_or_builtin(
    catalog: Catalog, store: ObjectStore | None, plugins_bucket: str, namespace: str, name: str, version: str | None,
) -> dict:
    """The namespace's plugin version; for a builtin name the namespace lacks, install it first."""
    plugins = PluginCatalog(catalog)
    try:
        return await plugins.version_by_name(namespace, name, version)
    except NotFound:
        if name not in BUILTIN_PLUGINS or store is None:
            raise
    data, manifest, builtin_version = await asyncio.to_thread(builtin_archive, name)
    if version is not None and version != builtin_version:
        raise NotFound(f"builtin plugin {name!r} is version {builtin_version}, not {version}",
                       details={"name": name, "version": version, "available": [builtin_version]})
    plugin_id = plugin_id_for(namespace, name, builtin_version)
    key = archive_key(namespace, name, builtin_version)
    await store.ensure_bucket(plugins_bucket)
    info = await store.put_bytes(plugins_bucket, key, data, content_type="application/zip")
    feature_uris = [f"sluice://{name}@{builtin_version}/{f['feature_name']}" for f in manifest["features"]]
    record = {
        "plugin_id": plugin_id, "namespace": namespace, "plugin_name": name, "version": builtin_version,
        "description": manifest.get("description"), "upload_id": None, "builtin": True,
        "archive": {"bucket": plugins_bucket, "key": key}, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": info.size,
        "files": [], "manifest": manifest, "scan_report": {"passed": True, "findings": []}, "dry_runs": [],
        "feature_uris": feature_uris, "has_realtime": True, "deployment_status": "NOT_DEPLOYED", "registered_at": now(),
    }
    record, created = await plugins.add_version(record)
    if created or (await catalog.get(HEADS, head_key(namespace, name))) is None:
        await plugins.activate(namespace, name, plugin_id, reason="builtin installed")
    log.info("builtin.installed", namespace=namespace, plugin=name, version=builtin_version, created=created)
    return await catalog.get(VERSIONS, plugin_id) or record
