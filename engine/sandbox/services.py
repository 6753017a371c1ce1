"""What a plugin host may ask its owner for. TRUSTED side: it runs in the ingest actor, the Serve
replica or the register function, which hold the credentials; it answers for ONE namespace.

- `asset(url, suffix)`: an object of the job's namespace (`s3://bucket/key`, or a `file://` URL
  of the local object store) copied into the host's scratch folder. Buckets not bound to the
  namespace, and `file://` paths outside the object store, are refused.
- `model(model_id)`: a model deployed in the namespace's registry, exported once per content
  digest into the namespace's model folder (state_dicts as one flat file the host maps
  read-only; ONNX and Hugging Face files as they are).
- `secret(name)` / `secrets()`: the namespace's secrets, decrypted here; the host never holds a key.
- `llm(request)` / `llm_providers()`: the platform's LLM providers.
Every refusal is an answer (`{"ok": false, "error": {...}}`), never an exception in the owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from events.errors import Forbidden, InvalidInput, NotFound, SluiceError, TooLarge, TransientError

_export_lock = threading.Lock()
MAX_ASSET_COPIES_BYTES = 16 * 1024**3
"""What one host's asset copies may hold in its scratch folder at once (the owner writes them, so
the host's own file-size limit does not bound them)."""


class HostServices:
    """The owner's answers to one host (one namespace, one scratch folder)."""

    def __init__(self, namespace: str, *, asset_access: Mapping[str, Any], secrets_context: Mapping[str, Any],
                 models_dir: Path, model_source: Any = None, llm: Any = None,
                 max_asset_bytes: int = MAX_ASSET_COPIES_BYTES) -> None:
        self.namespace = namespace
        self.asset_access = dict(asset_access)
        self.data_bucket = str(self.asset_access.get("data_bucket") or "")
        self.secrets_context = dict(secrets_context)
        self.models_dir = Path(models_dir)
        self.model_source = model_source
        self.llm = llm
        self.max_asset_bytes = max_asset_bytes
        self.scratch: Path | None = None
        self.scratch_owner: tuple[int, int] | None = None
        self._s3: Any = None  # a botocore S3 client, made on first use

    # --- dispatch ---------------------------------------------------------------------------------

    def answer(self, call: str, args: Mapping[str, Any]) -> dict[str, Any]:
        try:
            handler = getattr(self, f"sdk_{call}", None)
            if handler is None:
                raise InvalidInput(f"unknown SDK request {call!r}")
            return {"ok": True, "value": handler(**dict(args))}
        except TypeError as exc:
            return {"ok": False, "error": {"kind": "invalid_input", "message": f"bad SDK request {call!r}: {exc}"}}
        except Exception as exc:  # noqa: BLE001 - every failure is an answer to the plugin
            return {"ok": False, "error": _error(exc)}

    # --- assets -----------------------------------------------------------------------------------

    def sdk_asset(self, url: str, suffix: str = "") -> str:
        if not isinstance(url, str) or not isinstance(suffix, str) or len(suffix) > 32 or "/" in suffix:
            raise InvalidInput("asset requests take a URL and a short file suffix")
        scheme = url.split(":", 1)[0].lower()
        dest = self._dest(suffix)
        if scheme == "s3":
            bucket, _, key = url[5:].partition("/")
            if bucket != self.data_bucket:  # the tenant's own name: `s3://docs/a.pdf` is its bucket `docs`
                bucket, key = self.data_bucket, f"{self.namespace}/{bucket}/{key}"
            self._check_object(bucket, key, url)
            self._fetch_s3(bucket, key, dest, url)
        elif scheme == "file" and self.asset_access.get("kind") == "local":
            source = self._local_object(url)
            self._check_room(source.stat().st_size, url)
            shutil.copyfile(source, dest)
        else:
            raise Forbidden(f"asset {url!r} is not an object of namespace {self.namespace!r}; plugins read their "
                            "namespace's objects (s3://bucket/key), their own files and their scratch folder")
        if self.scratch_owner is not None:
            os.chown(dest, *self.scratch_owner)
        return str(dest)

    def _dest(self, suffix: str) -> Path:
        if self.scratch is None:
            raise TransientError("the plugin host has no scratch folder yet")
        folder = self.scratch / "assets"
        if not folder.is_dir():
            folder.mkdir()
            if self.scratch_owner is not None:
                os.chown(folder, *self.scratch_owner)
        return folder / f"{uuid.uuid4().hex}{suffix}"

    def _check_room(self, size: int, url: str) -> None:
        """Refuse a copy that would take the host's asset copies past `max_asset_bytes`."""
        folder = self.scratch / "assets" if self.scratch is not None else None
        held = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else 0
        if held + size > self.max_asset_bytes:
            raise TooLarge(f"asset {url!r} ({size} bytes) does not fit: this plugin's open asset copies hold {held} of "
                           f"{self.max_asset_bytes} bytes; close the assets you are done with (open_asset deletes on exit)")

    def _check_object(self, bucket: str, key: str, url: str) -> None:
        """Only the namespace's own folder of the data bucket (`infra/objectstore/tenant.py`)."""
        parts = key.split("/")
        if not self.data_bucket or bucket != self.data_bucket or len(parts) < 3 or parts[0] != self.namespace \
                or any(p in ("", ".", "..") for p in parts):
            raise Forbidden(f"asset {url!r} is not an object of namespace {self.namespace!r}")

    def _local_object(self, url: str) -> Path:
        parts = urlsplit(url)
        root = Path(self.asset_access["root"]).resolve()
        path = Path(url2pathname(unquote(parts.path))).resolve()
        if parts.netloc not in ("", "localhost") or not path.is_relative_to(root):
            raise Forbidden(f"asset {url!r} is outside the object store; plugins read their namespace's objects")
        segments = path.relative_to(root).parts if path != root else ("",)
        self._check_object(segments[0], "/".join(segments[1:]), url)
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            raise Forbidden(f"asset {url!r} names the store's internal files")
        if not path.is_file():
            raise NotFound(f"asset {url!r} does not exist")
        return path

    def _fetch_s3(self, bucket: str, key: str, dest: Path, url: str) -> None:
        if self.asset_access.get("kind") == "local":
            root = Path(self.asset_access["root"])
            source = self._local_object((root / bucket / key).as_uri())
            self._check_room(source.stat().st_size, url)
            shutil.copyfile(source, dest)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        if self._s3 is None:
            self._s3 = s3_client(self.asset_access)
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                self._check_room(int(response.get("ContentLength") or 0), url)
            except TooLarge:
                body.close()
                raise
            with open(dest, "wb") as out:
                for chunk in iter(lambda: body.read(1024 * 1024), b""):
                    out.write(chunk)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise NotFound(f"asset {url!r} does not exist") from exc
            raise TransientError(f"reading asset {url!r} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"reading asset {url!r} failed: {exc}") from exc

    # --- secrets and LLM --------------------------------------------------------------------------

    def sdk_secret(self, name: str) -> str:
        from engine.namespace_secrets import SecretsAccessor

        accessor = SecretsAccessor.from_context(self.namespace, self.secrets_context.get("secrets") or {})
        return _run(accessor.get(str(name)))

    def sdk_secrets(self) -> list[str]:
        return sorted(((self.secrets_context.get("secrets") or {}).get("sealed") or {}).keys())

    def _llm(self) -> Any:
        if self.llm is None:
            from engine.llm import LLMService

            self.llm = LLMService()
        return self.llm

    def sdk_llm_providers(self) -> list[str]:
        return list(self._llm().providers)

    def sdk_llm(self, request: dict[str, Any]) -> dict[str, Any]:
        from engine.llm import LLMRequest

        result = _run(self._llm().process(LLMRequest.model_validate(request)))
        return result.model_dump(mode="json")

    # --- models -----------------------------------------------------------------------------------

    def sdk_model(self, model_id: str) -> dict[str, Any]:
        if not isinstance(model_id, str) or not model_id:
            raise InvalidInput("a model id is a non-empty string")
        payload = (self.model_source or _ray_models(self.namespace))(model_id)
        return export_payload(payload, self.models_dir)


def s3_client(access: Mapping[str, Any]) -> Any:
    """A botocore S3 client from an `asset_access` of kind s3 (the owner's; never a host's)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=access.get("endpoint_url"), region_name=access.get("region") or "us-east-1",
        aws_access_key_id=access.get("access_key_id"), aws_secret_access_key=access.get("secret_access_key"))


def _ray_models(namespace: str) -> Any:
    """The namespace's deployed models, from its holder actor (this process is on Ray)."""
    def fetch(model_id: str) -> dict[str, Any]:
        import ray

        from engine.models.errors import ModelNotAvailable
        from engine.models.registry import holder

        if not ray.is_initialized():
            raise ModelNotAvailable(model_id, "no model registry is configured in this process (it is not connected to Ray)")
        actor = holder(namespace, create=False)
        refs = ray.get(actor.get.remote(model_id)) if actor is not None else None
        if not refs:
            raise ModelNotAvailable(
                model_id, f"no model {model_id!r} is deployed in namespace {namespace!r}; upload it and deploy it with "
                          f"POST /v1/namespaces/{namespace}/models/{model_id}/deploy")
        return ray.get(refs[0])

    return fetch


def export_payload(payload: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write a model payload where hosts of its namespace can map it, once per content digest
    (checked again on every export), and say how to load it."""
    if payload["kind"] == "state_dict":
        return _export_state_dict(payload["state_dict"], folder)
    files: dict[str, bytes] = payload["files"]
    digest = hashlib.sha256(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()).hexdigest()
    target = folder / digest
    with _export_lock:
        if not _files_match(target, files):
            _write_folder(target, files)
    if payload["kind"] == "onnx" and len(files) == 1:
        return {"kind": "bytes", "path": str(target / payload["model"])}
    return {"kind": "path", "path": str(target / payload["model"] if payload["kind"] == "onnx" else target)}


def _export_state_dict(arrays: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One flat file: every tensor's bytes, 64-byte aligned, with an index of (dtype, shape, offset, size)."""
    index: dict[str, list[Any]] = {}
    hasher = hashlib.sha256()
    offset = 0
    parts = []
    for name in sorted(arrays):
        value = arrays[name]
        array = value["__bfloat16__"] if isinstance(value, dict) else value
        dtype = "bfloat16" if isinstance(value, dict) else array.dtype.str
        data = memoryview(array.tobytes() if not array.flags.c_contiguous else array.reshape(-1).view("uint8"))
        pad = (-offset) % 64
        offset += pad
        index[name] = [dtype, list(array.shape), offset, data.nbytes]
        parts.append((pad, data))
        hasher.update(f"{name}|{dtype}|{array.shape}|".encode())
        hasher.update(data)
        offset += data.nbytes
    digest = hasher.hexdigest()
    path = folder / f"{digest}.weights"
    with _export_lock:
        if not (path.is_file() and _file_digest(path) == _flat_digest(path, index)):
            work = Path(tempfile.mkstemp(prefix=".weights-", dir=folder)[1])
            with open(work, "wb") as out:
                for pad, data in parts:
                    out.write(b"\0" * pad)
                    out.write(data)
            os.chmod(work, 0o444)
            work.replace(path)
    return {"kind": "state_dict", "path": str(path), "index": index}


def _flat_digest(path: Path, index: dict[str, list[Any]]) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for name in sorted(index):
            dtype, shape, offset, size = index[name]
            f.seek(offset)
            hasher.update(f"{name}|{dtype}|{tuple(shape)}|".encode())
            hasher.update(f.read(size))
    return hasher.hexdigest()


def _file_digest(path: Path) -> str:
    return path.name.removesuffix(".weights")


def _files_match(target: Path, files: dict[str, bytes]) -> bool:
    if not target.is_dir():
        return False
    for rel, data in files.items():
        path = target / rel
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").digest() != hashlib.sha256(data).digest():
                return False
    return True


def _write_folder(target: Path, files: dict[str, bytes]) -> None:
    from engine.sandbox.cache import remove_tree

    work = Path(tempfile.mkdtemp(prefix=".model-", dir=target.parent))
    for rel, data in files.items():
        path = work / rel
        if not path.resolve().is_relative_to(work.resolve()):
            raise InvalidInput(f"model file {rel!r} resolves outside its folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    remove_tree(target)
    os.chmod(work, 0o755)
    work.rename(target)


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[Any] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # noqa: BLE001
            error.append(exc)

    thread = threading.Thread(target=runner)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _error(exc: BaseException) -> dict[str, Any]:
    from engine.models.errors import ModelNotAvailable

    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, ModelNotAvailable):
        return {"kind": "model_not_available", "model_id": exc.model_id, "message": message}
    name = type(exc).__name__
    if name == "SecretNotFound":
        return {"kind": "secret_not_found", "message": message}
    if name == "LLMUnavailable":
        return {"kind": "llm_unavailable", "message": message}
    if isinstance(exc, NotFound):
        return {"kind": "not_found", "message": message}
    if isinstance(exc, Forbidden):
        return {"kind": "forbidden", "message": message}
    if isinstance(exc, (InvalidInput, TooLarge)):
        return {"kind": "invalid_input", "message": message}
    if isinstance(exc, TransientError):
        return {"kind": "transient", "message": message}
    if isinstance(exc, SluiceError):
        return {"kind": "permanent", "message": message}
    return {"kind": "permanent", "message": f"{name}: {message}"}


__all__ = ["HostServices", "export_payload", "s3_client"]
