"""Deployment records (`plugin_deployments`, the source of truth the REST status reads) and each
plugin name's serving version (`plugin_serving`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from engine.realtime import control
from events.envelope import AnyEnvelope, make
from events.payloads import PluginDeploymentChanged
from events.publisher import Publish
from functions.records import cache as record_cache
from functions.records.plugins import VERSIONS, PluginCatalog, now
from functions.records.status import DeploymentStatus
from infra.catalog.base import Catalog, Update, Upsert, WriteConflict

log = structlog.get_logger("sluice.deploy")

DEPLOYMENTS = "plugin_deployments"
SERVING = "plugin_serving"


def serving_key(namespace: str, plugin_name: str) -> str:
    """Key of a plugin name's serving version (kind `plugin_serving`)."""
    return f"{namespace}|{plugin_name}"


def batch_only_reason(version: dict) -> str | None:
    """Why a version cannot answer queries, or None when it can: it needs `realtime.py`, or a
    feature it computes from text (then the generic deployment runs its own steps on the query)."""
    if version.get("has_realtime"):
        return None
    manifest = version.get("manifest") or {}
    if not manifest.get("features"):
        return "it declares no features and has no realtime.py: batch-only"
    if "text" not in (manifest.get("supported_input_types") or ["text"]):
        return "it has no realtime.py and does not take text input, so queries cannot be embedded: batch-only"
    return None


def deployment_record(version: dict, status: str, **changes: Any) -> dict:
    return {
        "plugin_id": version["plugin_id"], "namespace": version["namespace"], "plugin_name": version["plugin_name"],
        "version": version["version"], "app_name": control.app_name(version["namespace"], version["plugin_name"], version["version"]),
        "mode": "realtime" if version.get("has_realtime") else "generic", "status": status, "error": None,
        "warning": None, "desired": "deployed", "updated_at": now(), **changes,
    }


class Deployments:
    """The deployment records, and the plugin names' serving versions."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def record(self, plugin_id: str) -> dict | None:
        """The version's deployment record as stored (None when it never was deployed)."""
        return await self.catalog.get(DEPLOYMENTS, plugin_id)

    async def get(self, namespace: str, plugin_id: str) -> dict:
        """The version's deployment (NOT_DEPLOYED when it never was); NotFound for another namespace's."""
        version = await PluginCatalog(self.catalog).get_version(namespace, plugin_id)
        record = await self.catalog.get(DEPLOYMENTS, plugin_id)
        if record is None:
            reason = batch_only_reason(version)
            return deployment_record(version, DeploymentStatus.NOT_DEPLOYED, desired="undeployed", error=None, reason=reason)
        return record

    async def set(self, plugin_id: str, status: str, *, expect: dict | None = None, publish: Publish | None = None,
                  events: Sequence[AnyEnvelope] = (), **changes: Any) -> dict | None:
        """Move a record to `status`; None when `expect` no longer holds (another request won).
        With `publish`, the `events` are stored in the same transaction (the outbox)."""
        fields = {"status": status, "updated_at": now(), **changes}
        updated: dict | None
        if publish is not None:
            try:
                [result] = await publish.commit([Update(DEPLOYMENTS, plugin_id, fields, expect=expect)], events)
                updated = result if isinstance(result, dict) else None
            except WriteConflict:
                updated = None
        else:
            updated = await self.catalog.update(DEPLOYMENTS, plugin_id, fields, expect=expect)
        record_cache.forget(self.catalog, DEPLOYMENTS, plugin_id)
        if updated is not None:  # the version's copy of the status, for listings
            await self.catalog.update(VERSIONS, plugin_id, {"deployment_status": status})
        return updated

    async def put(self, record: dict, *, publish: Publish | None = None, events: Sequence[AnyEnvelope] = ()) -> dict:
        """Store the record (and the version's copy of its status); with `publish`, the `events`
        are stored in the same transaction (the outbox)."""
        if publish is not None:
            await publish.commit([Upsert(DEPLOYMENTS, record["plugin_id"], record)], events)
        else:
            await self.catalog.upsert(DEPLOYMENTS, record["plugin_id"], record)
        record_cache.forget(self.catalog, DEPLOYMENTS, record["plugin_id"])
        await self.catalog.update(VERSIONS, record["plugin_id"], {"deployment_status": record["status"]})
        return record

    async def serving(self, namespace: str, plugin_name: str) -> dict | None:
        return await self.catalog.get(SERVING, serving_key(namespace, plugin_name))

    async def set_serving(self, record: dict) -> None:
        await self.catalog.upsert(SERVING, serving_key(record['namespace'], record['plugin_name']), {
            "namespace": record["namespace"], "plugin_name": record["plugin_name"], "plugin_id": record["plugin_id"],
            "version": record["version"], "since": now(),
        })

    async def retire_serving(self, record: dict) -> None:
        """After `record` stopped serving: the name's serving version becomes the newest other
        DEPLOYED version, or none."""
        current = await self.serving(record["namespace"], record["plugin_name"])
        if current is None or current["plugin_id"] != record["plugin_id"]:
            return
        others = [r for r in await self.catalog.find(DEPLOYMENTS, {
            "namespace": record["namespace"], "plugin_name": record["plugin_name"], "status": DeploymentStatus.DEPLOYED})
            if r["plugin_id"] != record["plugin_id"]]
        if others:
            await self.set_serving(max(others, key=lambda r: _version_key(r["version"])))
        else:
            await self.catalog.delete(SERVING, serving_key(record['namespace'], record['plugin_name']))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def changed_event(record: dict, status: DeploymentStatus, *, error: str | None = None) -> AnyEnvelope:
    return make(PluginDeploymentChanged(plugin_id=record["plugin_id"], status=status, error=error),
                namespace=record["namespace"])

