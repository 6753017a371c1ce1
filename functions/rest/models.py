"""Model registry routes: upload (multipart, or presigned PUT then confirm), list, get, delete, aliases.

Both upload paths end the same way: the archive sits under the model's upload key, confirm checks
its size, publishes `ModelUploadConfirmed` and waits (bounded) for the `validate_model` function
to record REGISTERED or REJECTED in the catalog; past the wait it answers 202 with a status URL.

The multipart route (the seeds' `curl -F file=@model.tar.gz -F name=... -F version=...`) parses the
body as a stream: the file part goes to a scratch file on disk, never into memory, and the request
is refused as soon as it passes `settings.models_max_archive_bytes`. The namespace's model limit
is checked before a byte of the body is read. Every route is scoped to the namespace in its path.

A presigned URL carries the same limit (the local store refuses a larger PUT; the URL is
single-use); confirm checks the stored size too (S3 cannot bound a presigned PUT): a larger
archive is deleted and the model REJECTED with MDL102, and the same name and version can be
requested again for a new URL. A ticket never confirmed is removed by the upload sweeper
(functions/runtime/sweeper.py) once its URL expired.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from events.envelope import make
from events.errors import Conflict, InvalidInput, TooLarge
from events.payloads import ModelUploadConfirmed, ObjectRef
from functions.records.models import (
    ARCHIVE_CONTENT_TYPE,
    MODELS,
    RULE_EMPTY,
    RULE_TOO_LARGE,
    ModelRegistry,
    describe_finding,
    model_id_for,
    model_key,
    now,
)
from functions.records.status import MODEL_TERMINAL, ModelStatus
from functions.rest.deps import ScopedNamespace
from functions.runtime.scratch import scratch
from functions.services.model_deploy import deploy_model, sync_aliases, undeploy_model
from infra.bootstrap import Platform
from infra.catalog.base import WriteConflict

FORM_FIELDS = ("name", "version", "model_format", "framework", "task_type", "num_cpus", "num_gpus", "memory_gb")
MAX_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 1024 * 1024  # room for the text fields and part headers beside the archive
WRITE_BUFFER_BYTES = 1024 * 1024


class ModelRejectedError(InvalidInput):
    """422: validation refused the archive; `details.errors` lists every finding."""

    error_type = "model_rejected"


class ModelSpec(BaseModel):
    """What an upload declares (the seeds' form fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="`^[a-zA-Z][a-zA-Z0-9_-]{2,63}$`.", examples=["my-embedding-model"])
    version: str = Field(description="X.Y.Z.", examples=["1.0.0"])
    model_format: str = Field(description="pytorch, safetensors, onnx or huggingface.", examples=["pytorch"])
    framework: str | None = Field(default=None, max_length=100, examples=["pytorch"])
    task_type: str | None = Field(default=None, max_length=100, examples=["embedding"])
    num_cpus: float | None = Field(default=None, description="CPU cores (default 1.0).")
    num_gpus: float | None = Field(default=None, description="GPUs (default 0).")
    memory_gb: float | None = Field(default=None, description="Memory in GB (default 4.0).")


class UploadRequest(ModelSpec):
    size_bytes: int | None = Field(default=None, ge=0, description="Archive size, if known: refused at once when over the limit.")


def _platform(request: Request) -> Platform:
    return request.app.state.platform


def _registry(request: Request) -> ModelRegistry:
    return ModelRegistry(_platform(request).catalog)


def _base(request: Request, namespace: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/v1/namespaces/{namespace}/models"


def public(record: dict, request: Request) -> dict[str, Any]:
    """A model as clients see it (upload bookkeeping stays inside)."""
    status = record["status"]
    namespace, model_id = record["namespace"], record["model_id"]
    archive = record.get("archive") or {}
    registered = status == ModelStatus.REGISTERED
    return {
        "model_id": model_id, "namespace": namespace, "name": record["name"], "version": record["version"],
        "model_format": record["model_format"], "framework": record.get("framework"), "task_type": record.get("task_type"),
        "resources": record.get("resources") or {}, "status": status,
        "validation_status": {ModelStatus.REGISTERED: "PASSED", ModelStatus.REJECTED: "FAILED"}.get(status, "PENDING"),
        "validation_errors": record.get("errors") or [], "errors": record.get("errors") or [],
        "deployment_status": record.get("deployment_status"), "deployed": record.get("deployment_status") == "DEPLOYED",
        "deployment_error": record.get("error") if record.get("deployment_status") == "FAILED" else None,
        "cached": bool(record.get("cached")), "aliases": record.get("aliases") or [],
        "sha256": record.get("sha256"), "size_bytes": record.get("size_bytes"), "total_bytes": record.get("total_bytes"),
        "files": record.get("files") or [], "details": record.get("details") or {},
        "model_archive_url": _platform(request).store.url(archive["bucket"], archive["key"]) if registered and archive else None,
        "endpoint": f"/v1/namespaces/{namespace}/models/{model_id}",
        "status_url": f"{_base(request, namespace)}/{model_id}",
        "created_at": record.get("created_at"), "registered_at": record.get("registered_at"),
    }


# --- streaming multipart ------------------------------------------------------------------------

@dataclass
class _Form:
    """Text fields and the one file part of a multipart body, as `_receive_form` collects them."""

    limit: int
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    _name: str = ""
    _is_file: bool = False
    _data: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""
    _header: bytes = b""
    _value: bytes = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin, "on_part_data": self._part_data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        }

    def _begin(self) -> None:
        self._name, self._is_file, self._data, self._disposition = "", False, bytearray(), b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name, self._is_file = name, b"filename" in options
        if name == "file":
            if not self._is_file:
                raise InvalidInput("form field 'file' must be a file part: -F file=@model.tar.gz", details={"field": "file"})
            if self.filename is not None:
                raise InvalidInput("the form carries more than one 'file' part; send one archive", details={"field": "file"})
            self.filename = options[b"filename"].decode("utf-8", "replace")
        elif name not in FORM_FIELDS or self._is_file:
            raise InvalidInput(f"unknown form field {name!r}; accepted: file, {', '.join(FORM_FIELDS)}", details={"field": name})
        elif name in self.fields:
            raise InvalidInput(f"form field {name!r} is given twice", details={"field": name})

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name != "file":
            if len(self._data) + end - start > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes", details={"field": self._name})
            self._data += data[start:end]
            return
        self.size += end - start
        if self.size > self.limit:
            raise too_large(self.size, self.limit, while_streaming=True)
        self.pending.append(data[start:end])
        self.pending_bytes += end - start

    def _end(self) -> None:
        if self._name != "file":
            self.fields[self._name] = self._data.decode("utf-8", "replace").strip()


def too_large(size: int, limit: int, *, while_streaming: bool = False) -> TooLarge:
    amount = f"more than {limit}" if while_streaming else str(size)
    return TooLarge(
        f"the model archive is {amount} bytes; the limit is {limit} bytes (SLUICE_MODELS_MAX_ARCHIVE_BYTES)",
        details={"field": "file", "size_bytes": size, "limit_bytes": limit, "setting": "SLUICE_MODELS_MAX_ARCHIVE_BYTES"},
    )


async def _receive_form(request: Request, dest: Path, limit: int) -> _Form:
    """Parse the body as it arrives; the file part is written to `dest` in 1 MiB writes."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidInput(
            "upload the model as multipart/form-data (-F file=@model.tar.gz -F name=... -F version=... -F model_format=...), "
            "or request a presigned URL with POST .../models/uploads",
            details={"content_type": request.headers.get("content-type")},
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise TooLarge(
            f"the request is {declared} bytes (Content-Length); the model archive limit is {limit} bytes "
            "(SLUICE_MODELS_MAX_ARCHIVE_BYTES)",
            details={"field": "file", "content_length": int(declared), "limit_bytes": limit},
        )
    form = _Form(limit=limit)
    parser = MultipartParser(params[b"boundary"], cast(Any, form.callbacks()))
    with dest.open("wb") as out:
        async def flush(force: bool = False) -> None:
            if form.pending and (force or form.pending_bytes >= WRITE_BUFFER_BYTES):
                data = b"".join(form.pending)
                form.pending.clear()
                form.pending_bytes = 0
                await asyncio.to_thread(out.write, data)

        try:
            async for chunk in request.stream():
                parser.write(chunk)
                await flush()
            parser.finalize()
        except MultipartParseError as exc:
            raise InvalidInput(f"malformed multipart body: {exc}") from None
        await flush(force=True)
    return form


def _spec_from_form(form: _Form) -> ModelSpec:
    if form.filename is None:
        raise InvalidInput("the form has no 'file' part: add -F file=@model.tar.gz", details={"field": "file"})
    missing = [f for f in ("name", "version", "model_format") if not form.fields.get(f)]
    if missing:
        raise InvalidInput(f"form field {missing[0]!r} is required (missing: {', '.join(missing)})", details={"field": missing[0]})
    if form.size == 0:
        raise InvalidInput(f"the uploaded file {form.filename!r} is empty", details={"field": "file"})
    try:
        return ModelSpec.model_validate({k: v for k, v in form.fields.items() if v != ""})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error["loc"])
        raise InvalidInput(f"form field {name!r}: {error['msg']}", details={"field": name}) from None


# --- confirm and wait ---------------------------------------------------------------------------

async def _create(request: Request, namespace: str, spec: ModelSpec) -> dict:
    platform = _platform(request)
    settings = platform.settings
    await platform.store.ensure_bucket(settings.models_bucket)
    try:
        previous = await platform.catalog.get(MODELS, model_key(namespace, model_id_for(spec.name, spec.version)))
    except InvalidInput:
        previous = None  # `create` names what is wrong
    record = await _registry(request).create(
        namespace, name=spec.name, version=spec.version, model_format=spec.model_format, framework=spec.framework,
        task_type=spec.task_type, resources={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "memory_gb": spec.memory_gb},
        bucket=settings.models_bucket, max_models=settings.models_max_per_namespace, expires_in=settings.upload_url_expires_s,
    )
    replaced = (previous or {}).get("upload") or {}
    if replaced.get("key") and replaced["key"] != record["upload"]["key"]:
        # an earlier unconfirmed (or rejected) upload of this id: its object would be left behind
        await platform.store.delete(replaced["bucket"], replaced["key"])
    return record


async def _confirm(request: Request, record: dict) -> dict:
    """Check the upload exists and is within limits, then publish the confirm event once."""
    platform = _platform(request)
    settings = platform.settings
    registry = _registry(request)
    namespace, model_id, upload = record["namespace"], record["model_id"], record["upload"]
    info = await platform.store.head(upload["bucket"], upload["key"])
    if info is None:
        raise Conflict(f"nothing was uploaded for model {model_id!r} yet: PUT the archive to the presigned URL first",
                       details={"model_id": model_id})
    expect = {"status": ModelStatus.AWAITING_UPLOAD, "upload_id": record["upload_id"]}
    if info.size > settings.models_max_archive_bytes:  # S3 cannot bound a presigned PUT; the local store refused it already
        error = too_large(info.size, settings.models_max_archive_bytes)
        await platform.store.delete(upload["bucket"], upload["key"])
        await registry.update(namespace, model_id, {"status": ModelStatus.REJECTED, "finished_at": now(), "size_bytes": info.size,
                                                    "errors": [{"rule_id": RULE_TOO_LARGE, "file": "", "message": error.message}]},
                              expect=expect)
        raise error
    if info.size == 0:
        raise InvalidInput(f"the uploaded archive for {model_id!r} is empty; PUT the .tar.gz bytes to the presigned URL",
                           details={"model_id": model_id, "rule_id": RULE_EMPTY})
    if record.get("expires_at", "") <= now():  # its slot lapsed with the URL: it must fit again
        await registry.check_capacity(namespace, settings.models_max_per_namespace, excluding=model_id)
    event = make(ModelUploadConfirmed(
        model_id=model_id, model_format=record["model_format"], archive=ObjectRef(bucket=upload["bucket"], key=upload["key"]),
    ), namespace=namespace)
    change = registry.change(namespace, model_id, {"status": ModelStatus.VALIDATING, "confirmed_at": now(), "size_bytes": info.size},
                             expect=expect)
    try:
        [changed] = await platform.outbox.commit([change], [event])  # the status and its event: both or neither
    except WriteConflict:
        return await registry.get(namespace, model_id)  # a concurrent confirm won; both wait for one outcome
    assert isinstance(changed, dict)
    return changed


async def _wait(request: Request, record: dict, wait: float | None) -> dict:
    registry = _registry(request)
    deadline = time.monotonic() + (_platform(request).settings.confirm_wait_s if wait is None else wait)
    while record["status"] not in MODEL_TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        record = await registry.get(record["namespace"], record["model_id"])
    return record


def _answer(record: dict, request: Request, *, ok: int) -> JSONResponse:
    view = public(record, request)
    if record["status"] == ModelStatus.REJECTED:
        errors = record.get("errors") or []
        first = describe_finding(errors[0]) if errors else "no reason recorded"
        more = f" (and {len(errors) - 1} more findings)" if len(errors) > 1 else ""
        raise ModelRejectedError(
            f"model {record['model_id']} was rejected: {first}{more}",
            details={"model_id": record["model_id"], "status": ModelStatus.REJECTED, "errors": errors, "model": view},
        )
    return JSONResponse({"success": True, **view}, status_code=ok if record["status"] == ModelStatus.REGISTERED else 202)


# --- routes -------------------------------------------------------------------------------------

_MULTIPART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "name", "version", "model_format"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": ".tar.gz archive of the weights"},
        **{name: {"type": "string"} for name in ("name", "version", "model_format", "framework", "task_type")},
        **{name: {"type": "number"} for name in ("num_cpus", "num_gpus", "memory_gb")},
    },
}}}}}

WaitQuery = Annotated[float | None, Query(ge=0, le=600, description="Seconds to wait for the outcome (default SLUICE_CONFIRM_WAIT_S).")]


async def _sync_aliases(request: Request, namespace: str) -> None:
    p = _platform(request)
    await sync_aliases(p.catalog, p.compute, namespace)


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/namespaces/{namespace}/models", tags=["models"])

    @api.post("", status_code=201, openapi_extra=_MULTIPART_BODY,
              responses={202: {"description": "Still validating; follow status_url."}, 413: {}, 422: {}})
    async def upload_model(namespace: ScopedNamespace, request: Request, wait: WaitQuery = None) -> Any:
        """Upload a .tar.gz in one multipart request; answers once validated (201) or rejected (422)."""
        platform = _platform(request)
        settings = platform.settings
        await _registry(request).check_capacity(namespace, settings.models_max_per_namespace)
        with scratch(settings.scratch_dir, "model-upload-") as work:
            path = work / "model.tar.gz"
            form = await _receive_form(request, path, settings.models_max_archive_bytes)
            record = await _create(request, namespace, _spec_from_form(form))
            try:
                await platform.store.put_file(record["upload"]["bucket"], record["upload"]["key"], path, content_type=ARCHIVE_CONTENT_TYPE)
            except BaseException:
                await _registry(request).delete(namespace, record["model_id"])
                raise
        record = await _confirm(request, record)
        return _answer(await _wait(request, record, wait), request, ok=201)

    @api.post("/uploads", status_code=201)
    async def request_upload(namespace: ScopedNamespace, body: UploadRequest, request: Request) -> Any:
        """A presigned PUT URL for the archive; then POST the confirm_url."""
        platform = _platform(request)
        settings = platform.settings
        if body.size_bytes is not None and body.size_bytes > settings.models_max_archive_bytes:
            raise too_large(body.size_bytes, settings.models_max_archive_bytes)
        record = await _create(request, namespace, body)
        upload = record["upload"]
        url = await platform.store.presign_put(upload["bucket"], upload["key"], expires_in=settings.upload_url_expires_s,
                                               max_bytes=settings.models_max_archive_bytes)
        base = _base(request, namespace)
        return {
            "model_id": record["model_id"], "name": record["name"], "version": record["version"],
            "model_format": record["model_format"], "status": record["status"],
            "presigned_url": url, "expires_in": settings.upload_url_expires_s,
            "upload_headers": {"Content-Type": ARCHIVE_CONTENT_TYPE}, "max_archive_bytes": settings.models_max_archive_bytes,
            "confirm_url": f"{base}/uploads/{record['model_id']}/confirm", "status_url": f"{base}/{record['model_id']}",
        }

    @api.post("/uploads/{model_id}/confirm", responses={202: {}, 413: {}, 422: {}})
    async def confirm_upload(namespace: ScopedNamespace, model_id: str, request: Request, wait: WaitQuery = None) -> Any:
        record = await _registry(request).get(namespace, model_id)
        if record["status"] == ModelStatus.AWAITING_UPLOAD:
            record = await _confirm(request, record)
        return _answer(await _wait(request, record, wait), request, ok=200)

    @api.get("")
    async def list_models(namespace: ScopedNamespace, request: Request) -> Any:
        models = [public(r, request) for r in await _registry(request).list(namespace)]
        return {"success": True, "models": models, "total": len(models)}

    @api.get("/{model_id}")
    async def get_model(namespace: ScopedNamespace, model_id: str, request: Request) -> Any:
        """`model_id` may be an id (`my-model_1_0_0`), `name@alias` or `name@X.Y.Z`."""
        return public(await _registry(request).resolve(namespace, model_id), request)

    @api.delete("/{model_id}")
    async def delete_model(namespace: ScopedNamespace, model_id: str, request: Request) -> Any:
        """Remove the record, the aliases pointing at it, and its archive."""
        platform = _platform(request)
        registry = _registry(request)
        if "@" in model_id:
            target = await registry.resolve(namespace, model_id)
            raise InvalidInput(f"delete takes a model id, not an alias: {model_id!r} is {target['model_id']!r}",
                               details={"model_id": model_id, "resolves_to": target["model_id"]})
        await registry.resolve(namespace, model_id)  # NotFound before anything is released
        _, removed = await undeploy_model(platform.catalog, platform.compute, namespace, model_id)
        record = await registry.delete(namespace, model_id)
        for ref in (record.get("archive"), record.get("upload")):
            if ref and ref.get("key"):
                await platform.store.delete(ref["bucket"], ref["key"])
        await _sync_aliases(request, namespace)
        return {"deleted": True, "model_id": model_id, "name": record["name"], "version": record["version"],
                "deployment_removed": removed}

    @api.post("/{model_id}/deploy")
    async def deploy(namespace: ScopedNamespace, model_id: str, request: Request) -> Any:
        """Put the weights into the Ray object store for this namespace's plugins (`cached: true`)."""
        p = _platform(request)
        record = await deploy_model(p.catalog, p.store, p.settings, p.compute, p.publish, namespace, model_id)
        await _sync_aliases(request, namespace)
        return {**public(record, request), "deployment_status": record["deployment_status"], "cached": record.get("cached", False)}

    @api.post("/{model_id}/undeploy")
    async def undeploy(namespace: ScopedNamespace, model_id: str, request: Request) -> Any:
        """Release the weights from the object store; the model stays registered."""
        p = _platform(request)
        record, removed = await undeploy_model(p.catalog, p.compute, namespace, model_id)
        return {**public(record, request), "deployment_removed": removed}

    @api.put("/{model_id}/aliases/{alias}")
    async def set_alias(namespace: ScopedNamespace, model_id: str, alias: str, request: Request) -> Any:
        """Point `{name}@{alias}` at this model (moving it from another version of the name)."""
        registry = _registry(request)
        target = await registry.resolve(namespace, model_id)
        record, moved_from = await registry.set_alias(namespace, target["model_id"], alias)
        await _sync_aliases(request, namespace)
        return {"model_id": record["model_id"], "name": record["name"], "alias": alias, "ref": f"{record['name']}@{alias}",
                "moved_from": moved_from, "aliases": record.get("aliases") or []}

    @api.delete("/{model_id}/aliases/{alias}")
    async def remove_alias(namespace: ScopedNamespace, model_id: str, alias: str, request: Request) -> Any:
        registry = _registry(request)
        target = await registry.resolve(namespace, model_id)
        record = await registry.remove_alias(namespace, target["model_id"], alias)
        await _sync_aliases(request, namespace)
        return {"deleted": True, "model_id": record["model_id"], "alias": alias, "aliases": record.get("aliases") or []}

    return api


__all__ = ["router", "public"]
