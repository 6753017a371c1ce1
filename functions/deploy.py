"""deploy: a plugin version's realtime endpoint on Ray Serve, and its life.

```
POST .../plugins/{id}/deploy ─► record QUEUED ─► DeployPlugin ─► handle():
    PENDING (spec and plan built) ─► IN_PROGRESS (Serve application created, replicas starting)
    ─► DEPLOYED (every replica started and answered its warm-up call)
     | FAILED (the replica's error and the last lines of its traceback; the application is removed)
```
Each change is recorded in `plugin_deployments` (the source of truth the REST status reads) and
published as `PluginDeploymentChanged`. A version that cannot serve queries (no `realtime.py` and no
text embedding) is `NOT_DEPLOYED` at once: batch-only.

**Blue-green.** Every version is its own Serve application (`engine.realtime.control.app_name`), so
a new version starts beside the old one and never replaces it: collections keep querying the
version that built their index, and the plugin name's *serving* version (`plugin_serving`, what
`.../plugins/{name}/realtime` answers with) moves to the new version only once it is DEPLOYED. A
version that fails leaves the serving one as it was.

**Desired state.** The record's `desired` says whether the version should be serving; `reconcile`
(at `sluice up`) queues again every version that should be serving but whose application is gone
(a local Ray does not outlive the process that started it).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import structlog

from engine.realtime import control
from events.envelope import AnyEnvelope, make
from events.payloads import DeployPlugin, PluginDeploymentChanged
from functions import record_cache
from functions.plugin_catalog import VERSIONS, PluginCatalog, now
from functions.runner import publish
from functions.secrets import SecretsStore
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.settings import Settings

log = structlog.get_logger("sluice.deploy")

DEPLOYMENTS = "plugin_deployments"
SERVING = "plugin_serving"

QUEUED, PENDING, IN_PROGRESS, DEPLOYED, FAILED, NOT_DEPLOYED = (
    "QUEUED", "PENDING", "IN_PROGRESS", "DEPLOYED", "FAILED", "NOT_DEPLOYED")
IN_FLIGHT = frozenset({QUEUED, PENDING, IN_PROGRESS})
POLL_S = 0.25
_IDS = uuid.UUID("6b0f3c8e-4f47-4a52-9d1e-5e1f0c6d2a10")


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


def _record(version: dict, status: str, **changes: Any) -> dict:
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

    async def get(self, namespace: str, plugin_id: str) -> dict:
        """The version's deployment (NOT_DEPLOYED when it never was); NotFound for another namespace's."""
        version = await PluginCatalog(self.catalog).get_version(namespace, plugin_id)
        record = await self.catalog.get(DEPLOYMENTS, plugin_id)
        if record is None:
            reason = batch_only_reason(version)
            return _record(version, NOT_DEPLOYED, desired="undeployed", error=None, reason=reason)
        return record

    async def set(self, plugin_id: str, status: str, *, expect: dict | None = None, **changes: Any) -> dict | None:
        """Move a record to `status`; None when `expect` no longer holds (another request won)."""
        updated = await self.catalog.update(DEPLOYMENTS, plugin_id, {"status": status, "updated_at": now(), **changes}, expect=expect)
        record_cache.forget(self.catalog, DEPLOYMENTS, plugin_id)
        if updated is not None:
            await self.catalog.update(VERSIONS, plugin_id, {"deployment_status": status})
        return updated

    async def put(self, record: dict) -> dict:
        await self.catalog.upsert(DEPLOYMENTS, record["plugin_id"], record)
        record_cache.forget(self.catalog, DEPLOYMENTS, record["plugin_id"])
        await self.catalog.update(VERSIONS, record["plugin_id"], {"deployment_status": record["status"]})
        return record

    async def serving(self, namespace: str, plugin_name: str) -> dict | None:
        return await self.catalog.get(SERVING, f"{namespace}|{plugin_name}")

    async def set_serving(self, record: dict) -> None:
        await self.catalog.upsert(SERVING, f"{record['namespace']}|{record['plugin_name']}", {
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
            "namespace": record["namespace"], "plugin_name": record["plugin_name"], "status": DEPLOYED})
            if r["plugin_id"] != record["plugin_id"]]
        if others:
            await self.set_serving(max(others, key=lambda r: _version_key(r["version"])))
        else:
            await self.catalog.delete(SERVING, f"{record['namespace']}|{record['plugin_name']}")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _changed(record: dict, status: str, *, error: str | None = None) -> AnyEnvelope:
    return make(PluginDeploymentChanged(plugin_id=record["plugin_id"], status=status, error=error),
                namespace=record["namespace"])


# --- requests (REST, CLI, collections) --------------------------------------------------------

async def request_deploy(catalog: Catalog, bus: Any, topics: Any, namespace: str, plugin_id: str) -> dict:
    """Queue a deployment of the version (a no-op while one is queued, running or deployed)."""
    deployments = Deployments(catalog)
    version = await PluginCatalog(catalog).get_version(namespace, plugin_id)
    current = await catalog.get(DEPLOYMENTS, plugin_id)
    reason = batch_only_reason(version)
    if reason is not None:
        record = await deployments.put(_record(version, NOT_DEPLOYED, desired="undeployed", reason=reason))
        await publish(bus, topics, _changed(record, NOT_DEPLOYED))
        return record
    if current is not None and current["desired"] == "deployed" and current["status"] in IN_FLIGHT | {DEPLOYED}:
        return current
    record = await deployments.put(_record(version, QUEUED, requested_at=now(), attempt=uuid.uuid4().hex))
    await publish(bus, topics, make(DeployPlugin(plugin_id=plugin_id), namespace=namespace), _changed(record, QUEUED))
    return record


async def request_undeploy(catalog: Catalog, bus: Any, topics: Any, namespace: str, plugin_id: str) -> dict:
    """Remove the version's endpoint now; the archive and the version stay registered."""
    deployments = Deployments(catalog)
    version = await PluginCatalog(catalog).get_version(namespace, plugin_id)
    record = await catalog.get(DEPLOYMENTS, plugin_id) or _record(version, NOT_DEPLOYED)
    removed = await remove_app(record)
    record = await deployments.put({**record, "status": NOT_DEPLOYED, "desired": "undeployed", "error": None,
                                    "updated_at": now(), "undeployed_at": now()})
    await deployments.retire_serving(record)
    await publish(bus, topics, _changed(record, NOT_DEPLOYED))
    return {**record, "deployment_removed": removed}


async def remove_app(record: dict) -> bool:
    """Delete the version's Serve application; True when there was one."""
    import ray

    if not ray.is_initialized():
        return False
    name = record["app_name"]
    existed = (await asyncio.to_thread(control.state, name)).status != "NOT_STARTED"
    await asyncio.to_thread(control.delete, name)
    return existed


async def forget(catalog: Catalog, namespace: str, plugin_id: str) -> bool:
    """A deleted version: its application and records go. True when an application was removed."""
    record = await catalog.get(DEPLOYMENTS, plugin_id)
    if record is None or record["namespace"] != namespace:
        return False
    removed = await remove_app(record)
    await Deployments(catalog).retire_serving(record)
    await catalog.delete(DEPLOYMENTS, plugin_id)
    record_cache.forget(catalog, DEPLOYMENTS, plugin_id)
    return removed


async def reconcile(catalog: Catalog, bus: Any, topics: Any) -> list[str]:
    """Queue again every version that should be serving but has no running application."""
    running = await asyncio.to_thread(control.running_apps)
    queued = []
    for record in await catalog.find(DEPLOYMENTS, {"desired": "deployed"}):
        if running.get(record["app_name"]) == "RUNNING" and record["status"] == DEPLOYED:
            continue
        if record["status"] in IN_FLIGHT and record["app_name"] in running:
            continue  # a deploy in progress elsewhere
        updated = await Deployments(catalog).set(record["plugin_id"], QUEUED, attempt=uuid.uuid4().hex, error=None)
        if updated is not None:
            await publish(bus, topics, make(DeployPlugin(plugin_id=record["plugin_id"]), namespace=record["namespace"]),
                          _changed(updated, QUEUED))
            queued.append(record["plugin_id"])
    if queued:
        log.info("deploy.reconciled", queued=queued)
    return queued


# --- the handler -------------------------------------------------------------------------------

async def deploy_spec(catalog: Catalog, store: ObjectStore, settings: Settings, version: dict, *, gpus: int) -> Any:
    """What a replica needs: the archive's URL (replicas fetch and check it themselves), the
    manifest's features and text fields, the namespace's secrets context, and asset access."""
    from engine.ingest.worker import PluginSpec
    from functions.ingest import asset_access, namespace_buckets, sandbox_options

    manifest = version.get("manifest") or {}
    return PluginSpec(
        plugin_id=version["plugin_id"], namespace=version["namespace"], name=version["plugin_name"],
        version=version["version"], sha256=version["sha256"],
        archive=store.url(version["archive"]["bucket"], version["archive"]["key"]),
        parameters=dict(manifest.get("parameter_defaults") or {}), collection_id=None,
        input_fields=tuple(manifest.get("input_fields") or ()),
        features=tuple((f["feature_name"], int(f["embedding_dim"])) for f in manifest.get("features") or ()),
        context=await SecretsStore.from_settings(catalog, settings).context_for(version["namespace"]),
        available_gpus=gpus, asset_access=asset_access(settings, await namespace_buckets(catalog, version["namespace"])),
        network_allow=tuple(version.get("network_allow") or ()), sandbox=sandbox_options(settings).as_dict(),
    )


_TRACE_NOISE = re.compile(r"^\s*(File \".*(site-packages|/ray/).*|\^+|~+\^*~*|ray::.*|Traceback.*)$")


def failure_text(message: str, limit: int = 15) -> str:
    """Serve's failure message cut to what a plugin author needs: the error line first, then the
    last lines of the traceback without Ray's own frames."""
    lines = [line.rstrip() for line in (message or "").replace("\x1b[36m", "").replace("\x1b[39m", "").splitlines() if line.strip()]
    useful = [line for line in lines if not _TRACE_NOISE.match(line)]
    errors = [line for line in useful if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*", line.strip())]
    head = errors[-1].strip() if errors else (useful[-1].strip() if useful else "the deployment failed")
    tail = useful[-limit:]
    return head + ("\n--- last log lines ---\n" + "\n".join(tail) if tail else "")


async def handle(
    event: AnyEnvelope, *, catalog: Catalog, store: ObjectStore, settings: Settings, compute: Any, bus: Any, topics: Any,
) -> list[AnyEnvelope]:
    command: DeployPlugin = event.payload
    deployments = Deployments(catalog)
    record = await catalog.get(DEPLOYMENTS, command.plugin_id)
    if record is None or record["namespace"] != event.namespace or record["desired"] != "deployed":
        log.info("deploy.skipped", plugin_id=command.plugin_id, reason="not requested (undeployed or deleted since)")
        return []
    attempt = record.get("attempt")
    if record["status"] == DEPLOYED:
        state = await asyncio.to_thread(control.state, record["app_name"])
        if state.status == "RUNNING":
            return []  # a redelivery after success
    step = 0

    async def move(status: str, **changes: Any) -> dict | None:
        """Record and publish one change, unless a newer request took the record over."""
        nonlocal step, record
        updated = await deployments.set(command.plugin_id, status, expect={"attempt": attempt, "desired": "deployed"}, **changes)
        if updated is None:
            return None
        record = updated
        step += 1
        changed = event.child(PluginDeploymentChanged(plugin_id=command.plugin_id, status=status, error=changes.get("error")))
        changed = changed.model_copy(update={"event_id": uuid.uuid5(_IDS, f"{event.event_id}/{step}").hex})
        await publish(bus, topics, changed)
        return record

    async def fail(error: str) -> list[AnyEnvelope]:
        log.warning("deploy.failed", plugin_id=command.plugin_id, error=error.splitlines()[0])
        await move(FAILED, error=error, failed_at=now())
        return []

    if not getattr(compute, "runs_jobs", False):
        return await fail("realtime deployments run on Ray, and compute is disabled (SLUICE_COMPUTE=none)")
    version = await catalog.get(VERSIONS, command.plugin_id)
    if version is None:
        return await fail(f"plugin version {command.plugin_id} is no longer registered")
    if await move(PENDING) is None:
        return []
    cluster_gpus = float((await asyncio.to_thread(compute.resources)).get("GPU", 0))
    try:
        plan = control.serving_plan((version.get("manifest") or {}).get("realtime_config"),
                                    step_gpus=float(version.get("step_gpus") or 0), cluster_gpus=cluster_gpus,
                                    require_gpu=settings.require_gpu)
    except control.GpuUnavailable as exc:
        return await fail(str(exc))
    spec = await deploy_spec(catalog, store, settings, version, gpus=int(plan.num_gpus > 0 and cluster_gpus))
    name = record["app_name"]
    try:
        await asyncio.to_thread(control.deploy, name, spec, plan)
    except Exception as exc:  # noqa: BLE001 - Serve refused the application itself
        return await fail(f"Ray Serve refused the application: {type(exc).__name__}: {exc}")
    if await move(IN_PROGRESS, plan=plan.as_dict(), warning=plan.warning, started_at=now()) is None:
        return []
    deadline = time.monotonic() + settings.deploy_timeout_s
    while True:
        state = await asyncio.to_thread(control.state, name)
        if state.status == "RUNNING":
            break
        if state.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            await asyncio.to_thread(control.delete, name)
            return await fail(failure_text(state.message))
        current = await catalog.get(DEPLOYMENTS, command.plugin_id)
        if current is None or current.get("attempt") != attempt or current["desired"] != "deployed":
            return []  # undeployed, deleted or requested again meanwhile: that request owns it now
        if time.monotonic() > deadline:
            await asyncio.to_thread(control.delete, name)
            return await fail(f"the replicas were not healthy after {settings.deploy_timeout_s:g} s (SLUICE_DEPLOY_TIMEOUT_S); "
                              f"Serve says {state.status}: {failure_text(state.message) if state.message else 'no message'}")
        await asyncio.sleep(POLL_S)
    if await move(DEPLOYED, deployed_at=now(), replicas=state.replicas) is None:
        return []
    await deployments.set_serving(record)
    log.info("deploy.deployed", plugin_id=command.plugin_id, app=name, replicas=state.replicas, warning=plan.warning)
    return []


__all__ = [
    "DEPLOYED", "DEPLOYMENTS", "Deployments", "FAILED", "IN_FLIGHT", "IN_PROGRESS", "NOT_DEPLOYED", "PENDING", "QUEUED",
    "batch_only_reason", "forget", "handle", "reconcile", "request_deploy", "request_undeploy",
]
