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

import re
import uuid
from typing import Any

import structlog

from events.envelope import make
from events.payloads import DeployPlugin
from events.publisher import Publish
from functions.records import cache as record_cache
from functions.records.deployments import DEPLOYMENTS, Deployments, batch_only_reason, changed_event, deployment_record
from functions.records.plugins import PluginCatalog, now
from functions.records.secret_store import SecretsStore
from functions.records.status import DEPLOYMENT_IN_FLIGHT, DeploymentStatus
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.serving.base import ServeControl
from infra.settings import Settings

log = structlog.get_logger("sluice.deploy")


async def request_deploy(catalog: Catalog, publish: Publish, namespace: str, plugin_id: str) -> dict:
    """Queue a deployment of the version (a no-op while one is queued, running or deployed)."""
    deployments = Deployments(catalog)
    version = await PluginCatalog(catalog).get_version(namespace, plugin_id)
    current = await catalog.get(DEPLOYMENTS, plugin_id)
    reason = batch_only_reason(version)
    if reason is not None:
        record = deployment_record(version, DeploymentStatus.NOT_DEPLOYED, desired="undeployed", reason=reason)
        return await deployments.put(record, publish=publish, events=[changed_event(record, DeploymentStatus.NOT_DEPLOYED)])
    if current is not None and current["desired"] == "deployed" and current["status"] in DEPLOYMENT_IN_FLIGHT | {DeploymentStatus.DEPLOYED}:
        return current
    record = deployment_record(version, DeploymentStatus.QUEUED, requested_at=now(), attempt=uuid.uuid4().hex)
    return await deployments.put(record, publish=publish, events=[  # the request and its command: both or neither
        make(DeployPlugin(plugin_id=plugin_id), namespace=namespace), changed_event(record, DeploymentStatus.QUEUED)])


async def request_undeploy(catalog: Catalog, serve: ServeControl, publish: Publish, namespace: str, plugin_id: str) -> dict:
    """Remove the version's endpoint now; the archive and the version stay registered."""
    deployments = Deployments(catalog)
    version = await PluginCatalog(catalog).get_version(namespace, plugin_id)
    record = await catalog.get(DEPLOYMENTS, plugin_id) or deployment_record(version, DeploymentStatus.NOT_DEPLOYED)
    removed = await remove_app(serve, record)
    record = {**record, "status": DeploymentStatus.NOT_DEPLOYED, "desired": "undeployed", "error": None,
              "updated_at": now(), "undeployed_at": now()}
    await deployments.put(record, publish=publish, events=[changed_event(record, DeploymentStatus.NOT_DEPLOYED)])
    await deployments.retire_serving(record)
    return {**record, "deployment_removed": removed}


async def remove_app(serve: ServeControl, record: dict) -> bool:
    """Delete the version's Serve application; True when there was one."""
    if not await serve.available():
        return False
    name = record["app_name"]
    existed = (await serve.state(name)).status != "NOT_STARTED"
    await serve.delete(name)
    return existed


async def forget(catalog: Catalog, serve: ServeControl, namespace: str, plugin_id: str) -> bool:
    """A deleted version: its application and records go. True when an application was removed."""
    record = await catalog.get(DEPLOYMENTS, plugin_id)
    if record is None or record["namespace"] != namespace:
        return False
    removed = await remove_app(serve, record)
    await Deployments(catalog).retire_serving(record)
    await catalog.delete(DEPLOYMENTS, plugin_id)
    record_cache.forget(catalog, DEPLOYMENTS, plugin_id)
    return removed


async def reconcile(catalog: Catalog, serve: ServeControl, publish: Publish) -> list[str]:
    """Queue again every version that should be serving but has no running application."""
    running = await serve.running_apps()
    queued = []
    for record in await catalog.find(DEPLOYMENTS, {"desired": "deployed"}):
        if running.get(record["app_name"]) == "RUNNING" and record["status"] == DeploymentStatus.DEPLOYED:
            continue
        if record["status"] in DEPLOYMENT_IN_FLIGHT and record["app_name"] in running:
            continue  # a deploy in progress elsewhere
        updated = await Deployments(catalog).set(
            record["plugin_id"], DeploymentStatus.QUEUED, attempt=uuid.uuid4().hex, error=None, publish=publish,
            events=[make(DeployPlugin(plugin_id=record["plugin_id"]), namespace=record["namespace"]),
                    changed_event(record, DeploymentStatus.QUEUED)])
        if updated is not None:
            queued.append(record["plugin_id"])
    if queued:
        log.info("deploy.reconciled", queued=queued)
    return queued


# --- the handler -------------------------------------------------------------------------------

async def deploy_spec(catalog: Catalog, store: ObjectStore, settings: Settings, version: dict, *, gpus: int) -> Any:
    """What a replica needs: the archive's URL (replicas fetch and check it themselves), the
    manifest's features and text fields, the namespace's secrets context, and asset access."""
    from engine.ingest.worker import PluginSpec
    from functions.services.ingest import asset_access, sandbox_options

    manifest = version.get("manifest") or {}
    return PluginSpec(
        plugin_id=version["plugin_id"], namespace=version["namespace"], name=version["plugin_name"],
        version=version["version"], sha256=version["sha256"],
        archive=store.url(version["archive"]["bucket"], version["archive"]["key"]),
        parameters=dict(manifest.get("parameter_defaults") or {}), collection_id=None,
        input_fields=tuple(manifest.get("input_fields") or ()),
        features=tuple((f["feature_name"], int(f["embedding_dim"])) for f in manifest.get("features") or ()),
        context=await SecretsStore.from_settings(catalog, settings).context_for(version["namespace"]),
        available_gpus=gpus, asset_access=asset_access(settings),
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

