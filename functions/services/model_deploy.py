"""Model deploy: a registered model's weights into the Ray object store, held for its namespace.

`POST /v1/namespaces/{ns}/models/{model_id}/deploy` (model id or `name@alias`): the archive is read
back from the object store, its sha256 compared with the one validation recorded, validated again
(`engine.models.validate`: nothing in it runs), turned into a payload (a state_dict of numpy arrays,
ONNX bytes, a Hugging Face folder's files) and put into the object store owned by the namespace's
holder actor (`engine.models.registry`). The record gets `deployment_status` DEPLOYED and
`cached: true`; `ModelDeployed` is published. Deploying a deployed model is a no-op that says
`cached: true` (the seeds' "pre-deploy to warm the cache").

Deploy is synchronous (a REST call, like the hosted product's): validation and the put take
seconds for the model sizes the registry takes, and the caller wants `cached` in the answer.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from events.envelope import AnyEnvelope, make
from events.errors import Conflict
from events.payloads import ModelDeployed
from events.publisher import Publish
from functions.records.models import MODELS, ModelRegistry, model_key
from functions.records.plugins import now
from functions.runtime.scratch import sha256_file
from infra.catalog.base import Catalog, Update, WriteConflict
from infra.compute import Compute
from infra.objectstore.base import ObjectStore
from infra.settings import Settings

log = structlog.get_logger("sluice.models")

async def _record(catalog: Any, namespace: str, ref: str) -> dict:
    return await ModelRegistry(catalog).resolve(namespace, ref)


def _build(archive: Path, work: Path, record: dict) -> dict[str, Any]:
    from engine.models.registry import build_payload
    from engine.models.validate import validate_model_archive

    if record.get("sha256") and sha256_file(archive) != record["sha256"]:
        raise Conflict(f"the archive of model {record['model_id']} changed after validation; refusing to deploy it",
                       details={"model_id": record["model_id"]})
    validated = validate_model_archive(archive, work / "model", record["model_format"])
    return build_payload(validated.root, record["model_format"], validated.files)


async def deploy_model(catalog: Catalog, store: ObjectStore, settings: Settings, compute: Compute, publish: Publish,
                       namespace: str, ref: str) -> dict:
    """Deploy (or confirm deployed) the model `ref`; answers the updated record."""
    from engine.models import registry

    record = await _record(catalog, namespace, ref)
    if record.get("status") != "REGISTERED":
        raise Conflict(f"model {record['model_id']} is {record.get('status')}: only a registered model deploys",
                       details={"model_id": record["model_id"], "status": record.get("status")})
    if not getattr(compute, "runs_jobs", False):
        raise Conflict("models deploy to the Ray object store, and compute is disabled (SLUICE_COMPUTE=none)")
    held = await asyncio.to_thread(registry.deployed, namespace)
    if record["model_id"] in held and held[record["model_id"]].get("sha256") == record.get("sha256"):
        return await _mark(catalog, record, "DEPLOYED", cached=True, bytes=held[record["model_id"]].get("bytes"))
    work = Path(tempfile.mkdtemp(prefix="sluice-model-deploy-", dir=_scratch(settings)))
    try:
        await _mark(catalog, record, "DEPLOYING", cached=False)
        archive = work / "model.tar.gz"
        try:
            await store.download_file(record["archive"]["bucket"], record["archive"]["key"], archive)
            payload = await asyncio.to_thread(_build, archive, work, record)
            meta = {"sha256": record.get("sha256"), "model_format": record["model_format"], "name": record["name"],
                    "version": record["version"], "resources": record.get("resources") or {}}
            held = await asyncio.to_thread(registry.deploy, namespace, record["model_id"], payload, meta)
        except Exception as exc:
            await _mark(catalog, record, "FAILED", cached=False, error=f"{type(exc).__name__}: {exc}")
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    event = make(ModelDeployed(model_id=record["model_id"], cached=True, deployment_status="DEPLOYED"), namespace=namespace)
    updated = await _mark(catalog, record, "DEPLOYED", publish=publish, events=[event], cached=True, bytes=held.get("bytes"),
                          error=None, deployed_at=now())
    log.info("model.deployed", namespace=namespace, model_id=record["model_id"], bytes=held.get("bytes"))
    return updated


async def undeploy_model(catalog: Any, compute: Any, namespace: str, ref: str) -> tuple[dict, bool]:
    """Release the weights from the object store; the registered archive stays."""
    from engine.models import registry

    record = await _record(catalog, namespace, ref)
    removed = False
    if getattr(compute, "runs_jobs", False):
        removed = await asyncio.to_thread(registry.undeploy, namespace, record["model_id"])
    return await _mark(catalog, record, "NOT_DEPLOYED", cached=False), removed


async def _mark(catalog: Any, record: dict, status: str, *, publish: Publish | None = None, events: Sequence[AnyEnvelope] = (),
                **changes: Any) -> dict:
    """Record the deployment status; with `publish`, the `events` are stored with it (the outbox)."""
    key = model_key(record["namespace"], record["model_id"])
    fields = {"deployment_status": status, "deployed": status == "DEPLOYED", **changes}
    updated: Any
    if publish is not None:
        try:
            [updated] = await publish.commit([Update(MODELS, key, fields)], events)
        except WriteConflict:  # the model was deleted meanwhile: nothing to announce
            updated = None
    else:
        updated = await catalog.update(MODELS, key, fields)
    return updated or {**record, "deployment_status": status, **changes}


async def sync_aliases(catalog: Any, compute: Any, namespace: str) -> None:
    """Workers resolve `name@alias` through the namespace's holder: give it the current map."""
    if not getattr(compute, "runs_jobs", False):
        return
    from engine.models import registry
    from functions.records.models import ALIASES

    aliases = {f"{a['name']}@{a['alias']}": a["model_id"] for a in await catalog.find(ALIASES, {"namespace": namespace})}
    await asyncio.to_thread(registry.set_aliases, namespace, aliases)


async def reconcile_models(catalog: Catalog, store: ObjectStore, settings: Settings, compute: Compute,
                           publish: Publish) -> dict[str, list[str]]:
    """Deploy again every model whose record says it is in the object store but whose holder has
    lost it: a local Ray does not outlive the process that started it, and a cluster restart
    empties every holder. A model that no longer deploys is marked FAILED with the reason.
    Answers `{"redeployed": [...], "failed": [...]}` (`namespace/model_id`)."""
    from engine.models import registry

    outcome: dict[str, list[str]] = {"redeployed": [], "failed": []}
    if not getattr(compute, "runs_jobs", False):
        return outcome
    wanted = await catalog.find(MODELS, {"deployment_status": {"$in": ["DEPLOYED", "DEPLOYING"]}})
    for namespace in sorted({r["namespace"] for r in wanted}):
        held = await asyncio.to_thread(registry.deployed, namespace)
        for record in (r for r in wanted if r["namespace"] == namespace):
            entry = held.get(record["model_id"])
            if entry is not None and entry.get("sha256") == record.get("sha256"):
                continue
            try:
                await deploy_model(catalog, store, settings, compute, publish, namespace, record["model_id"])
            except Exception as exc:  # noqa: BLE001 - recorded on the model, and the others go on
                log.warning("model.redeploy_failed", namespace=namespace, model_id=record["model_id"], error=str(exc))
                outcome["failed"].append(f"{namespace}/{record['model_id']}")
            else:
                outcome["redeployed"].append(f"{namespace}/{record['model_id']}")
        await sync_aliases(catalog, compute, namespace)
    if outcome["redeployed"] or outcome["failed"]:
        log.info("model.reconciled", **outcome)
    return outcome


async def model_resources(catalog: Any, namespace: str) -> dict[str, dict[str, float]]:
    """{ref: resources} of the namespace's deployed models, under every name a plugin may use
    (`model_id`, `name@X.Y.Z`, `name@alias`): ingest applies them to the steps whose service
    loads that model (`LazyModelMixin.model_id` with `model_source="namespace"`, or
    `@lazy_model(..., model_source="namespace")`)."""
    from functions.records.models import ALIASES

    deployed = {r["model_id"]: r for r in await catalog.find(MODELS, {"namespace": namespace, "deployment_status": "DEPLOYED"})}
    resources: dict[str, dict[str, float]] = {}
    for model_id, record in deployed.items():
        hints = dict(record.get("resources") or {})
        resources[model_id] = resources[f"{record['name']}@{record['version']}"] = hints
    for alias in await catalog.find(ALIASES, {"namespace": namespace}):
        if alias["model_id"] in deployed:
            resources[f"{alias['name']}@{alias['alias']}"] = resources[alias["model_id"]]
    return resources


def _scratch(settings: Any) -> Path:
    path = Path(settings.scratch_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["deploy_model", "model_resources", "reconcile_models", "sync_aliases", "undeploy_model"]
