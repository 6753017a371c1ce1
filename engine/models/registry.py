"""Deployed models in the Ray object store, and how plugin code loads them.

* **Holders.** Each namespace has one named, detached actor (`ModelHolder`, name
  `sluice-models.{namespace}` in the Ray namespace `sluice-models`) that *owns* the object refs of
  the namespace's deployed models: it `ray.put`s the payload itself (Ray 2.56 removed `_owner=`),
  so the weights outlive the process that deployed them and stay until undeployed.
* **Payloads** are built from an archive that passed `engine.models.validate` (nothing in it ever
  runs): a state_dict as a dict of numpy arrays (pytorch, safetensors), the ONNX file's bytes
  (with its external data files, if any), or a Hugging Face folder's files.
* **Loading** (`NamespaceModels`, installed by the workers that run a namespace's plugin code as
  the resolver of `load_namespace_model`): asks the namespace's holder for the ref and reads it
  from the node's object store. numpy arrays come back zero-copy, so a state_dict is shared by
  every worker on the node (`torch.from_numpy` over read-only memory; `load_state_dict` copies it
  into the module). A resolver is bound to one namespace: a plugin of namespace B asking for a
  model of A gets `ModelNotAvailable` (a not-found error), because B's holder does not have it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from engine.env import engine_env
from engine.models.errors import ModelNotAvailable

RAY_NAMESPACE = "sluice-models"


def holder_name(namespace: str) -> str:
    return f"sluice-models.{namespace}"


# --- payloads ---------------------------------------------------------------------------------

def _numpy_state_dict(tensors: dict[str, Any]) -> dict[str, Any]:
    """Tensors as numpy arrays (zero-copy readable from the object store); bfloat16, which numpy
    lacks, is kept as its raw 16-bit pattern with the dtype named beside it."""
    import torch

    out: dict[str, Any] = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            out[name] = {"__bfloat16__": tensor.view(torch.int16).numpy()}
        else:
            out[name] = tensor.numpy()
    return out


def _torch_state_dict(arrays: dict[str, Any]) -> dict[str, Any]:
    import torch

    with warnings.catch_warnings():  # the arrays are read-only views of the object store
        warnings.simplefilter("ignore", UserWarning)
        return {name: torch.from_numpy(a["__bfloat16__"]).view(torch.bfloat16) if isinstance(a, dict) else torch.from_numpy(a)
                for name, a in arrays.items()}


def build_payload(root: Path, model_format: str, files: list[str]) -> dict[str, Any]:
    """What a holder keeps for a validated model folder `root` (its files relative to it)."""
    if model_format == "pytorch":
        import torch

        from engine.models.formats.pytorch import TORCH_SUFFIXES, check_torch_file, find_state_dict

        weights = [f for f in files if f.endswith(TORCH_SUFFIXES)]
        if len(weights) != 1:
            raise ValueError(f"a pytorch model deploys one weights file; the archive has {weights or 'none'}")
        problems, _ = check_torch_file(root / weights[0])  # the scan again, before the one torch.load below
        if problems:
            raise ValueError(f"{weights[0]}: {problems[0]}")
        loaded = torch.load(root / weights[0], map_location="cpu", weights_only=True)
        state_dict, _ = find_state_dict(loaded)
        assert state_dict is not None  # check_torch_file above refuses a file that holds no state dict (MDL312)
        return {"kind": "state_dict", "state_dict": _numpy_state_dict(dict(state_dict))}
    if model_format == "safetensors":
        from safetensors.torch import load_file

        tensors: dict[str, Any] = {}
        for f in sorted(f for f in files if f.endswith(".safetensors")):
            tensors.update(load_file(str(root / f)))
        return {"kind": "state_dict", "state_dict": _numpy_state_dict(tensors)}
    if model_format == "onnx":
        models = [f for f in files if f.endswith(".onnx")]
        if len(models) != 1:
            raise ValueError(f"an onnx model deploys one .onnx file; the archive has {models or 'none'}")
        return {"kind": "onnx", "model": models[0], "files": {f: (root / f).read_bytes() for f in files}}
    if model_format == "huggingface":
        return {"kind": "folder", "files": {f: (root / f).read_bytes() for f in files}}
    raise ValueError(f"unknown model_format {model_format!r}")


def payload_bytes(payload: dict[str, Any]) -> int:
    if payload["kind"] == "state_dict":
        return sum(int((a["__bfloat16__"] if isinstance(a, dict) else a).nbytes) for a in payload["state_dict"].values())
    return sum(len(b) for b in payload["files"].values())


# --- the holder actor -------------------------------------------------------------------------

class ModelHolder:
    """Owns a namespace's deployed models (wrapped by `ray.remote` in `holder()`)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.models: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, str] = {}
        """`name@alias` -> model_id, as the registry set them."""

    def add(self, model_id: str, payload: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """Keep the payload as an object this actor owns (so it outlives the deploying process)."""
        import ray

        self.models[model_id] = {"ref": ray.put(payload), **meta}
        return {"model_id": model_id, "cached": True, **meta}

    def get(self, ref: str) -> list[Any] | None:
        """`[ref]` (a list, so Ray hands back the ref rather than the value), or None. `ref` is a
        model id, `name@alias` or `name@X.Y.Z`."""
        model_id = self.aliases.get(ref, ref)
        if model_id not in self.models and "@" in ref:
            name, _, version = ref.partition("@")
            model_id = next((k for k, e in self.models.items() if e.get("name") == name and e.get("version") == version), ref)
        entry = self.models.get(model_id)
        return [entry["ref"]] if entry else None

    def set_aliases(self, aliases: dict[str, str]) -> None:
        self.aliases = dict(aliases)

    def remove(self, model_id: str) -> bool:
        return self.models.pop(model_id, None) is not None

    def list(self) -> dict[str, dict[str, Any]]:
        return {k: {m: v for m, v in e.items() if m != "ref"} for k, e in self.models.items()}


def holder(namespace: str, *, create: bool) -> Any:
    """The namespace's holder actor (created, detached, when `create`); None when there is none."""
    import ray

    name = holder_name(namespace)
    if not create:
        try:
            return ray.get_actor(name, namespace=RAY_NAMESPACE)
        except ValueError:
            return None
    return ray.remote(num_cpus=0, max_restarts=0)(ModelHolder).options(
        name=name, namespace=RAY_NAMESPACE, lifetime="detached", get_if_exists=True).remote(namespace)


def deploy(namespace: str, model_id: str, payload: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Put `payload` into the object store, owned by the namespace's holder. Blocks (call in a thread)."""
    import ray

    actor = holder(namespace, create=True)
    return ray.get(actor.add.remote(model_id, payload, {**meta, "bytes": payload_bytes(payload)}))


def set_aliases(namespace: str, aliases: dict[str, str]) -> None:
    """Tell the namespace's holder every `name@alias` -> model_id (when it exists)."""
    import ray

    actor = holder(namespace, create=False)
    if actor is not None:
        ray.get(actor.set_aliases.remote(aliases))


def undeploy(namespace: str, model_id: str) -> bool:
    import ray

    actor = holder(namespace, create=False)
    return bool(actor is not None and ray.get(actor.remove.remote(model_id)))


def deployed(namespace: str) -> dict[str, dict[str, Any]]:
    import ray

    actor = holder(namespace, create=False)
    return ray.get(actor.list.remote()) if actor is not None else {}


# --- loading in workers -----------------------------------------------------------------------

def _folder_cache() -> Path:
    return Path(engine_env().model_cache or Path(tempfile.gettempdir()) / f"sluice-models-{os.getuid()}")


def _materialise(files: dict[str, bytes], digest: str) -> Path:
    """The files as a folder on this node, written once per content digest (atomic rename)."""
    final = _folder_cache() / digest
    if (final / ".complete").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=final.parent))
    try:
        for rel, data in files.items():
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (work / ".complete").write_text(digest)
        try:
            work.rename(final)
        except OSError:  # another worker on this node won the race
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


class NamespaceModels:
    """`load_namespace_model`'s resolver in a worker of `namespace`: a state_dict (torch tensors
    over the shared object-store memory), the ONNX model's bytes (or, with external data, the
    path of its folder on this node), or a Hugging Face folder's path."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, model_id: str) -> Any:
        with self._lock:
            if model_id in self._loaded:
                return self._loaded[model_id]
        import ray

        if not ray.is_initialized():
            raise ModelNotAvailable(model_id, "this process is not connected to Ray, where deployed models live")
        actor = holder(self.namespace, create=False)
        refs = ray.get(actor.get.remote(model_id)) if actor is not None else None
        if not refs:
            raise ModelNotAvailable(
                model_id, f"no model {model_id!r} is deployed in namespace {self.namespace!r}; upload it and deploy it with "
                          f"POST /v1/namespaces/{self.namespace}/models/{model_id}/deploy")
        payload = ray.get(refs[0])
        value = self._value(payload, model_id)
        with self._lock:
            self._loaded[model_id] = value
        return value

    def _value(self, payload: dict[str, Any], model_id: str) -> Any:
        if payload["kind"] == "state_dict":
            return _torch_state_dict(payload["state_dict"])
        digest = hashlib.sha256(repr(sorted((k, len(v), hashlib.sha256(v).hexdigest()) for k, v in payload["files"].items()))
                                .encode()).hexdigest()
        if payload["kind"] == "onnx" and len(payload["files"]) == 1:
            return payload["files"][payload["model"]]
        folder = _materialise(payload["files"], digest)
        return folder / payload["model"] if payload["kind"] == "onnx" else folder


def install_resolver(namespace: str) -> None:
    """Make `load_namespace_model` in this process read `namespace`'s deployed models."""
    from engine.models.namespace import set_namespace_model_resolver

    set_namespace_model_resolver(NamespaceModels(namespace))


__all__ = [
    "ModelHolder", "NamespaceModels", "RAY_NAMESPACE", "build_payload", "deploy", "deployed", "holder", "holder_name",
    "install_resolver", "set_aliases", "undeploy",
]
