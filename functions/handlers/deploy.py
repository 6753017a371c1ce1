"""deploy: `DeployPlugin` → a plugin version's Serve application.

QUEUED (requested: functions/services/deploy.py) → PENDING → IN_PROGRESS → DEPLOYED | FAILED. Each
step is recorded first (`plugin_deployments`, conditional on the request's `attempt`, so an
undeploy or a newer request made meanwhile wins and this one stops), then published at once as
`PluginDeploymentChanged` (a deploy takes minutes); the outcome is the event the handler returns.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import structlog

from engine.realtime import control
from events.envelope import AnyEnvelope, Envelope
from events.payloads import DeployPlugin, PluginDeploymentChanged
from events.publisher import Publish
from functions.records.deployments import Deployments
from functions.records.plugins import VERSIONS, now
from functions.records.status import DeploymentStatus
from functions.services.deploy import deploy_spec, failure_text
from infra.catalog.base import Catalog
from infra.compute import Compute
from infra.objectstore.base import ObjectStore
from infra.serving.base import ServeControl
from infra.settings import Settings

log = structlog.get_logger("sluice.deploy")

POLL_S = 0.25
_IDS = uuid.UUID("6b0f3c8e-4f47-4a52-9d1e-5e1f0c6d2a10")


class _Attempt:
    """One deploy request's steps: each recorded only while the request is still the current one."""

    def __init__(self, event: Envelope[DeployPlugin], record: dict, deployments: Deployments, publish: Publish) -> None:
        self.event, self.record, self.deployments, self.publish = event, record, deployments, publish
        self.plugin_id, self.attempt, self.steps = event.payload.plugin_id, record.get("attempt"), 0

    def current(self, record: dict | None) -> bool:
        return record is not None and record.get("attempt") == self.attempt and record["desired"] == "deployed"

    def _changed(self, status: DeploymentStatus, error: str | None, step: int) -> AnyEnvelope:
        changed = self.event.child(PluginDeploymentChanged(plugin_id=self.plugin_id, status=status, error=error))
        return changed.model_copy(update={"event_id": uuid.uuid5(_IDS, f"{self.event.event_id}/{step}").hex})

    async def move(self, status: DeploymentStatus, *, publish: bool = False, **changes: Any) -> AnyEnvelope | None:
        """Record one step; its event, or None when a newer request took the record over. With
        `publish`, the event is stored with the step (the outbox) instead of returned for the runner."""
        changed = self._changed(status, changes.get("error"), self.steps + 1)
        updated = await self.deployments.set(self.plugin_id, status, expect={"attempt": self.attempt, "desired": "deployed"},
                                             publish=self.publish if publish else None, events=[changed] if publish else (),
                                             **changes)
        if updated is None:
            return None
        self.record, self.steps = updated, self.steps + 1
        return changed

    async def progress(self, status: DeploymentStatus, **changes: Any) -> bool:
        """Record and publish a step now, together; False when this request no longer owns the record."""
        return await self.move(status, publish=True, **changes) is not None

    async def fail(self, error: str) -> list[AnyEnvelope]:
        log.warning("deploy.failed", plugin_id=self.plugin_id, error=error.splitlines()[0])
        changed = await self.move(DeploymentStatus.FAILED, error=error, failed_at=now())
        return [changed] if changed is not None else []


async def handle(
    event: Envelope[DeployPlugin], *, catalog: Catalog, store: ObjectStore, settings: Settings, compute: Compute,
    serve: ServeControl, publish: Publish,
) -> list[AnyEnvelope]:
    deployments = Deployments(catalog)
    record = await deployments.record(event.payload.plugin_id)
    if record is None or record["namespace"] != event.namespace or record["desired"] != "deployed":
        log.info("deploy.skipped", plugin_id=event.payload.plugin_id, reason="not requested (undeployed or deleted since)")
        return []
    if record["status"] == DeploymentStatus.DEPLOYED and (await serve.state(record["app_name"])).status == "RUNNING":
        return []  # a redelivery after success
    run = _Attempt(event, record, deployments, publish)
    if not compute.runs_jobs:
        return await run.fail("realtime deployments run on Ray, and compute is disabled (SLUICE_COMPUTE=none)")
    version = await catalog.get(VERSIONS, run.plugin_id)
    if version is None:
        return await run.fail(f"plugin version {run.plugin_id} is no longer registered")
    if not await run.progress(DeploymentStatus.PENDING):
        return []
    cluster_gpus = float((await asyncio.to_thread(compute.resources)).get("GPU", 0))
    try:
        plan = control.serving_plan((version.get("manifest") or {}).get("realtime_config"),
                                    step_gpus=float(version.get("step_gpus") or 0), cluster_gpus=cluster_gpus,
                                    require_gpu=settings.require_gpu)
    except control.GpuUnavailable as exc:
        return await run.fail(str(exc))
    spec = await deploy_spec(catalog, store, settings, version, gpus=int(plan.num_gpus > 0 and cluster_gpus))
    name = record["app_name"]
    try:
        await serve.deploy(name, spec, plan)
    except Exception as exc:  # noqa: BLE001 - Serve refused the application itself
        return await run.fail(f"Ray Serve refused the application: {type(exc).__name__}: {exc}")
    if not await run.progress(DeploymentStatus.IN_PROGRESS, plan=plan.as_dict(), warning=plan.warning, started_at=now()):
        return []
    deadline = time.monotonic() + settings.deploy_timeout_s
    while (state := await serve.state(name)).status != "RUNNING":
        if state.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            await serve.delete(name)
            return await run.fail(failure_text(state.message))
        if not run.current(await deployments.record(run.plugin_id)):
            return []  # undeployed, deleted or requested again meanwhile: that request owns it now
        if time.monotonic() > deadline:
            await serve.delete(name)
            return await run.fail(
                f"the replicas were not healthy after {settings.deploy_timeout_s:g} s (SLUICE_DEPLOY_TIMEOUT_S); Serve says "
                f"{state.status}: {failure_text(state.message) if state.message else 'no message'}")
        await asyncio.sleep(POLL_S)
    deployed = await run.move(DeploymentStatus.DEPLOYED, deployed_at=now(), replicas=state.replicas)
    if deployed is None:
        return []
    await deployments.set_serving(run.record)
    log.info("deploy.deployed", plugin_id=run.plugin_id, app=name, replicas=state.replicas, warning=plan.warning)
    return [deployed]

