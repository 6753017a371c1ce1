"""Plugin routes: presigned upload and confirm, versions, source, rollback and diff.

Confirm publishes `PluginUploadConfirmed` and waits (bounded) for the scan and register functions
to record the outcome in the catalog; past the wait it answers 202 with a status URL. Every route
is scoped to the namespace in its path.

An archive is at most `settings.plugins_max_archive_bytes`: the presigned URL carries that limit
(the local store refuses a larger PUT; the URL is single-use), and confirm checks the stored size
too (S3 cannot bound a presigned PUT): a larger archive is deleted and the upload FAILED with
SLU902, so the client requests a new upload. An upload never confirmed is EXPIRED by the upload
sweeper (functions/runtime/sweeper.py) once its URL expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import io
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from engine.plugins.archive import ArchiveLimits
from events.envelope import make
from events.errors import Conflict, InvalidInput, NotFound, TooLarge
from events.payloads import Finding, ObjectRef, PluginUploadConfirmed
from functions.records.deployments import Deployments
from functions.records.plugins import VERSIONS, PluginCatalog, now
from functions.records.status import UPLOAD_TERMINAL, UploadStatus
from functions.rest.deps import ScopedNamespace
from functions.runtime.scratch import sha256_file
from functions.services.deploy import forget as forget_deployment
from functions.services.deploy import request_deploy, request_undeploy
from functions.services.retrieve import call_deployment, ready_deployment
from infra.bootstrap import Platform
from infra.catalog.base import WriteConflict

log = structlog.get_logger("sluice.rest.plugins")

LIMITS = ArchiveLimits()


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Plugin name, `^[a-zA-Z][a-zA-Z0-9_]{2,63}$`.", examples=["my_extractor"])
    version: str | None = Field(default=None, description="X.Y.Z; omitted: one patch above the latest version.", examples=["1.0.0"])
    description: str | None = Field(default=None, description="What changed (shown by `sluice plugin log`).", max_length=2000)
    strict: bool = Field(default=False, description="Fail on scanner and validator warnings too.")


class UploadTicket(BaseModel):
    upload_id: str = Field(description="Handle for confirm and status.")
    presigned_url: str = Field(description="PUT the zip here, without credentials.")
    expires_in: int = Field(description="Seconds the URL stays valid.")
    upload_headers: dict[str, str] = Field(description="Headers to send with the PUT.")
    max_archive_bytes: int = Field(description="Largest archive the URL takes (SLUICE_PLUGINS_MAX_ARCHIVE_BYTES).")
    plugin_name: str
    version: str = Field(description="The version this upload will register as.")
    confirm_url: str = Field(description="POST here once the PUT succeeded.")


class Outcome(BaseModel):
    upload_id: str
    status: str = Field(description="AWAITING_UPLOAD, CONFIRMED, REGISTERED, FAILED or EXPIRED (never confirmed).")
    plugin_id: str | None = Field(description="Id of the registered version.")
    plugin_name: str
    version: str
    validation_status: str = Field(description="PENDING, PASSED or FAILED.")
    validation_errors: list[Finding] = Field(description="Why it failed: rule id, file, line, message, hint.")
    warnings: list[Finding] = Field(default_factory=list)
    feature_uris: list[str] = Field(description="`sluice://{name}@{version}/{feature_name}` per declared feature.")
    deployment_status: str | None = Field(description="NOT_DEPLOYED until the realtime endpoint is deployed.")
    status_url: str = Field(description="GET this for the outcome.")


class RealtimeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(description="`text` or `texts`, and `vector_index`, as realtime.py receives them.",
                                   examples=[{"text": "a query"}])
    parameters: dict[str, Any] = Field(default_factory=dict, description="Inference options passed to the service.")


def _deployment_view(record: dict) -> dict:
    keep = ("plugin_id", "plugin_name", "version", "status", "error", "warning", "mode", "reason", "plan", "replicas",
            "requested_at", "started_at", "deployed_at", "failed_at", "updated_at", "deployment_removed")
    view = {k: record.get(k) for k in keep if k in record}
    view["deployment_status"] = record["status"]
    return view


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="Registered version to make active.", examples=["1.0.0"])


def _platform(request: Request) -> Platform:
    return request.app.state.platform


def _plugins(request: Request) -> PluginCatalog:
    return PluginCatalog(_platform(request).catalog)


def _outcome(upload: dict, request: Request) -> dict[str, Any]:
    status = upload["status"]
    base = str(request.base_url).rstrip("/")
    return Outcome(
        upload_id=upload["upload_id"], status=status, plugin_id=upload.get("plugin_id"),
        plugin_name=upload["plugin_name"], version=upload["version"],
        validation_status={UploadStatus.REGISTERED: "PASSED", UploadStatus.FAILED: "FAILED"}.get(status, "PENDING"),
        validation_errors=upload.get("validation_errors") or [], warnings=upload.get("warnings") or [],
        feature_uris=upload.get("feature_uris") or [], deployment_status=upload.get("deployment_status"),
        status_url=f"{base}/v1/namespaces/{upload['namespace']}/plugins/uploads/{upload['upload_id']}",
    ).model_dump(mode="json")


def _public(record: dict) -> dict:
    """A version as clients see it (storage details stay inside)."""
    manifest = record.get("manifest") or {}
    return {
        "plugin_id": record["plugin_id"], "plugin_name": record["plugin_name"], "version": record["version"],
        "description": record.get("description"), "active": record.get("active"),
        "sha256": record.get("sha256"), "size_bytes": record.get("size_bytes"), "files": record.get("files", []),
        "feature_uris": record.get("feature_uris", []), "features": manifest.get("features", []),
        "supported_input_types": manifest.get("supported_input_types", []),
        "parameter_schema": manifest.get("parameter_schema"), "parameter_defaults": manifest.get("parameter_defaults", {}),
        "has_realtime": record.get("has_realtime", False), "deployment_status": record.get("deployment_status"),
        "network_allow": record.get("network_allow", []),
        "scan_report": record.get("scan_report"), "dry_runs": record.get("dry_runs", []),
        "registered_at": record.get("registered_at"),
    }


def _read_sources(data: bytes) -> dict[str, bytes]:
    """Files of a registered archive, relative to the plugin root (it passed the archive checks)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
        files = {n: zf.read(n) for n in names}
    tops = {n.split("/", 1)[0] for n in files}
    if len(tops) == 1 and "manifest.py" not in files:
        top = tops.pop() + "/"
        files = {n[len(top):]: v for n, v in files.items()}
    return files


def _file_diff(path: str, old: bytes | None, new: bytes | None, v1: str, v2: str) -> dict[str, Any]:
    status = "added" if old is None else "removed" if new is None else "modified"
    try:
        a = (old or b"").decode().splitlines(keepends=True)
        b = (new or b"").decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return {"path": path, "status": status, "binary": True, "diff": f"Binary files {v1}/{path} and {v2}/{path} differ\n"}
    diff = "".join(difflib.unified_diff(a, b, fromfile=f"{v1}/{path}", tofile=f"{v2}/{path}"))
    return {"path": path, "status": status, "binary": False, "diff": diff}


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/namespaces/{namespace}/plugins", tags=["plugins"])

    @api.post("/uploads", status_code=201, response_model=UploadTicket)
    async def request_upload(namespace: ScopedNamespace, body: UploadRequest, request: Request) -> Any:
        platform = _platform(request)
        settings = platform.settings
        await platform.store.ensure_bucket(settings.plugins_bucket)
        upload = await _plugins(request).create_upload(
            namespace, body.name, version=body.version, description=body.description,
            bucket=settings.plugins_bucket, expires_in=settings.upload_url_expires_s, strict=body.strict,
        )
        url = await platform.store.presign_put(
            upload["archive"]["bucket"], upload["archive"]["key"], expires_in=settings.upload_url_expires_s,
            max_bytes=settings.plugins_max_archive_bytes,
        )
        base = str(request.base_url).rstrip("/")
        return UploadTicket(
            upload_id=upload["upload_id"], presigned_url=url, expires_in=settings.upload_url_expires_s,
            upload_headers={"Content-Type": "application/zip"}, max_archive_bytes=settings.plugins_max_archive_bytes,
            plugin_name=body.name, version=upload["version"],
            confirm_url=f"{base}/v1/namespaces/{namespace}/plugins/uploads/{upload['upload_id']}/confirm",
        )

    @api.post("/uploads/{upload_id}/confirm", response_model=Outcome, responses={202: {"model": Outcome}, 422: {"model": Outcome}})
    async def confirm_upload(
        namespace: ScopedNamespace, upload_id: str, request: Request,
        wait: Annotated[float | None, Query(ge=0, le=600, description="Seconds to wait for the outcome.")] = None,
    ) -> Any:
        platform = _platform(request)
        plugins = _plugins(request)
        upload = await plugins.get_upload(namespace, upload_id)
        if upload["status"] == UploadStatus.EXPIRED:
            raise Conflict(
                f"upload {upload_id} expired before it was confirmed (its URL expired at {upload.get('expires_at')}) and "
                "was removed: request a new upload", details={"upload_id": upload_id, "status": UploadStatus.EXPIRED},
            )
        if upload["status"] == UploadStatus.AWAITING_UPLOAD:
            await _confirm(platform, plugins, upload)
        deadline = time.monotonic() + (platform.settings.confirm_wait_s if wait is None else wait)
        while True:
            upload = await plugins.get_upload(namespace, upload_id)
            if upload["status"] in UPLOAD_TERMINAL or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        status_code = {UploadStatus.REGISTERED: 200, UploadStatus.FAILED: 422}.get(upload["status"], 202)
        return JSONResponse(_outcome(upload, request), status_code=status_code)

    @api.get("/uploads/{upload_id}", response_model=Outcome)
    async def upload_status(namespace: ScopedNamespace, upload_id: str, request: Request) -> Any:
        return _outcome(await _plugins(request).get_upload(namespace, upload_id), request)

    @api.get("")
    async def list_plugins(namespace: ScopedNamespace, request: Request) -> Any:
        return {"plugins": [_public(r) for r in await _plugins(request).list_plugins(namespace)]}

    @api.get("/by-name/{name}/versions")
    async def versions(namespace: ScopedNamespace, name: str, request: Request) -> Any:
        history = await _plugins(request).history(namespace, name)
        active = next((v["version"] for v in history if v["active"]), None)
        return {"plugin_name": name, "active_version": active, "versions": history}

    @api.post("/by-name/{name}/rollback")
    async def rollback(namespace: ScopedNamespace, name: str, body: RollbackRequest, request: Request) -> Any:
        plugins = _plugins(request)
        target = await plugins.version_by_name(namespace, name, body.version)
        head = await plugins.head(namespace, name)
        previous = head.get("active_plugin_id")
        await plugins.activate(namespace, name, target["plugin_id"], reason=f"rollback to {body.version}")
        prev_version = (await plugins.catalog.get(VERSIONS, previous) or {}).get("version") if previous else None
        return {
            "plugin_name": name,
            "active_version": target["version"],
            "plugin_id": target["plugin_id"],
            "previous_version": prev_version,
        }

    @api.get("/by-name/{name}/diff")
    async def diff(
        namespace: ScopedNamespace, name: str, request: Request,
        v1: Annotated[str, Query(description="Old version.")], v2: Annotated[str, Query(description="New version.")],
    ) -> Any:
        plugins = _plugins(request)
        store = _platform(request).store
        old, new = [await plugins.version_by_name(namespace, name, v) for v in (v1, v2)]
        old_files, new_files = [  # every registered archive passed the scanner's limit
            _read_sources(await store.get_bytes(r["archive"]["bucket"], r["archive"]["key"], max_bytes=LIMITS.max_compressed_bytes))
            for r in (old, new)
        ]
        files = [
            _file_diff(path, old_files.get(path), new_files.get(path), v1, v2)
            for path in sorted(set(old_files) | set(new_files)) if old_files.get(path) != new_files.get(path)
        ]
        return {"plugin_name": name, "v1": v1, "v2": v2, "files": files}

    @api.get("/{plugin_id}")
    async def get_plugin(namespace: ScopedNamespace, plugin_id: str, request: Request) -> Any:
        plugins = _plugins(request)
        record = await plugins.get_version(namespace, plugin_id)
        head = await plugins.head(namespace, record["plugin_name"])
        return _public({**record, "active": head.get("active_plugin_id") == plugin_id})

    @api.get("/{plugin_id}/source", response_class=FileResponse)
    async def source(namespace: ScopedNamespace, plugin_id: str, request: Request) -> Any:
        record = await _plugins(request).get_version(namespace, plugin_id)
        tmp = Path(tempfile.mkdtemp(prefix="sluice-source-"))
        path = tmp / f"{record['plugin_name']}-{record['version']}.zip"
        await _platform(request).store.download_file(record["archive"]["bucket"], record["archive"]["key"], path)
        if record.get("sha256") and sha256_file(path) != record["sha256"]:
            shutil.rmtree(tmp, ignore_errors=True)
            log.error("plugin.archive_changed", plugin_id=plugin_id, key=record["archive"]["key"])
            raise Conflict(f"the stored archive of {record['plugin_name']} {record['version']} no longer matches the digest "
                           "recorded at registration; it is not served (an operator should restore it or delete the version)",
                           details={"plugin_id": plugin_id, "sha256": record["sha256"]})
        return FileResponse(path, media_type="application/zip", filename=path.name,
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))

    @api.delete("/{plugin_id}")
    async def delete_plugin(namespace: ScopedNamespace, plugin_id: str, request: Request) -> Any:
        platform = _platform(request)
        await _plugins(request).get_version(namespace, plugin_id)  # NotFound before anything is removed
        removed = await forget_deployment(platform.catalog, platform.serve, namespace, plugin_id)
        record, active = await _plugins(request).delete_version(namespace, plugin_id)
        await platform.store.delete(record["archive"]["bucket"], record["archive"]["key"])
        return {
            "deleted": True, "plugin_id": plugin_id, "plugin_name": record["plugin_name"], "version": record["version"],
            "active_version": active["version"] if active else None, "deployment_removed": removed,
        }

    @api.post("/{plugin_id}/deploy", status_code=202)
    async def deploy(namespace: ScopedNamespace, plugin_id: str, request: Request) -> Any:
        """Queue the version's realtime deployment; follow it with GET .../status."""
        platform = _platform(request)
        if not getattr(platform.compute, "runs_jobs", False):
            raise Conflict("realtime deployments run on Ray, and compute is disabled (SLUICE_COMPUTE=none)")
        record = await request_deploy(platform.catalog, platform.publish, namespace, plugin_id)
        return _deployment_view(record)

    @api.post("/{plugin_id}/undeploy")
    async def undeploy(namespace: ScopedNamespace, plugin_id: str, request: Request) -> Any:
        """Remove the endpoint; the version and its archive stay registered."""
        platform = _platform(request)
        return _deployment_view(await request_undeploy(platform.catalog, platform.serve, platform.publish, namespace, plugin_id))

    @api.get("/{plugin_id}/status")
    async def deployment_status(namespace: ScopedNamespace, plugin_id: str, request: Request) -> Any:
        return _deployment_view(await Deployments(_platform(request).catalog).get(namespace, plugin_id))

    @api.post("/{plugin_id}/realtime")
    async def realtime(namespace: ScopedNamespace, plugin_id: str, body: RealtimeRequest, request: Request) -> Any:
        """Call the version's realtime service. `plugin_id` may also be a plugin name: the name's
        serving version answers (the newest version that finished deploying)."""
        platform = _platform(request)
        deployments = Deployments(platform.catalog)
        found = await platform.catalog.get(VERSIONS, plugin_id)
        if found is None or found.get("namespace") != namespace:  # another namespace's id is no id here
            serving = await deployments.serving(namespace, plugin_id)
            if serving is None:
                raise NotFound(f"no plugin version {plugin_id!r} and no deployed plugin named {plugin_id!r} in namespace {namespace!r}",
                               details={"plugin_id": plugin_id})
            plugin_id = serving["plugin_id"]
        version = await _plugins(request).get_version(namespace, plugin_id)
        record = await ready_deployment(platform.catalog, platform.settings, plugin_id,
                                        what=f"plugin {version['plugin_name']} {version['version']}")
        output = await call_deployment(record, "realtime", body.inputs, body.parameters, catalog=platform.catalog)
        return {"plugin_id": plugin_id, "plugin_name": version["plugin_name"], "version": version["version"], "outputs": output}

    return api


async def _confirm(platform: Platform, plugins: PluginCatalog, upload: dict) -> None:
    """Check the PUT happened and is within limits, then publish the confirm event once."""
    ref = upload["archive"]
    info = await platform.store.head(ref["bucket"], ref["key"])
    if info is None:
        raise Conflict(
            f"nothing was uploaded for {upload['upload_id']} yet: PUT the zip to the presigned URL first",
            details={"upload_id": upload["upload_id"]},
        )
    limit = platform.settings.plugins_max_archive_bytes
    if info.size > limit:  # S3 cannot bound a presigned PUT; the local store refused it already
        await platform.store.delete(ref["bucket"], ref["key"])
        message = f"the archive is {info.size} bytes; the limit is {limit} bytes (SLUICE_PLUGINS_MAX_ARCHIVE_BYTES)"
        await plugins.update_upload(upload["upload_id"], {
            "status": UploadStatus.FAILED, "finished_at": now(), "size_bytes": info.size, "validation_errors": [
                Finding(rule_id="SLU902", severity="error", file="", line=0, message=message,
                        hint="Do not bundle model weights; upload them to the model registry. Then request a new upload.",
                        ).model_dump()]}, expect={"status": UploadStatus.AWAITING_UPLOAD})
        raise TooLarge(message, details={"upload_id": upload["upload_id"], "size_bytes": info.size, "limit_bytes": limit,
                                         "setting": "SLUICE_PLUGINS_MAX_ARCHIVE_BYTES"})
    if info.size == 0:
        raise InvalidInput(
            "the uploaded archive is empty; PUT the zip bytes with Content-Type: application/zip",
            details={"upload_id": upload["upload_id"]},
        )
    event = make(PluginUploadConfirmed(
        upload_id=upload["upload_id"], plugin_name=upload["plugin_name"], version=upload["version"],
        description=upload.get("description"), archive=ObjectRef(bucket=ref["bucket"], key=ref["key"]),
        strict=bool(upload.get("strict")),
    ), namespace=upload["namespace"])
    change = plugins.upload_change(upload["upload_id"], {"status": UploadStatus.CONFIRMED, "confirmed_at": now(),
                                                         "size_bytes": info.size}, expect={"status": UploadStatus.AWAITING_UPLOAD})
    with contextlib.suppress(WriteConflict):  # a concurrent confirm won; both wait for the same outcome
        await platform.outbox.commit([change], [event])  # the status and its event: both or neither


__all__ = ["router"]
