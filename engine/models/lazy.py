"""Load a model on first use, once per service instance.

Services are constructed on every Ray worker (and by the dry run that only checks a plugin's
wiring), so loading weights in `__init__` would cost time and memory where the model is never used.
`LazyModelMixin` and `lazy_model` defer the load to the first batch or request.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from engine.models.device import select_device
from engine.models.hf import load_hf_model, resolve_class, resolve_dtype
from events.errors import PermanentError

__all__ = ["LazyModelMixin", "build_model", "instantiate_namespace_model", "lazy_model", "namespace_models_of"]


def build_model(
    model_id: str,
    model_class: Any = "AutoModel",
    tokenizer_class: Any = "AutoTokenizer",
    torch_dtype: Any = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """`(model, tokenizer)` for `model_id`: rebuilt from `load_hf_model`'s config and state dict
    (so the weights come from the process cache), in eval mode, on `device` or `select_device()`.
    The tokenizer is None when `tokenizer_class` is None."""
    import torch
    import transformers

    loaded = load_hf_model(model_id, model_class, tokenizer_class, torch_dtype)
    cls = resolve_class(model_class, "model_class")
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        config_class = cls.config_class
        assert config_class is not None  # None only on PreTrainedModel itself; a model class names its config class
        model = cls(config_class.from_dict(loaded["config"]))
    else:  # an Auto class: the config's model_type picks the architecture
        model = cls.from_config(transformers.AutoConfig.for_model(**loaded["config"]))
    state_dict = loaded["state_dict"]
    dtype = resolve_dtype(torch_dtype)
    if dtype is None or dtype == "auto":  # keep the checkpoint's precision
        dtype = next((t.dtype for t in state_dict.values() if torch.is_floating_point(t)), None)
    if dtype is not None:
        model = model.to(dtype)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise PermanentError(
            f"model {model_id!r}: the weights do not fit {getattr(cls, '__name__', cls)}: {exc}",
            details={"model_id": model_id},
        ) from exc
    model.eval()
    # transformers decorates .to with functools.wraps(nn.Module.to): its stub takes the model as an extra argument
    model.to(device or select_device())  # type: ignore[arg-type]
    return model, _load_tokenizer(loaded, tokenizer_class)


def _load_tokenizer(loaded: dict[str, Any], tokenizer_class: Any) -> Any:
    if tokenizer_class is None:
        return None
    tokenizer_cls = resolve_class(tokenizer_class, "tokenizer_class")
    return tokenizer_cls.from_pretrained(loaded["tokenizer_config"]["tokenizer_dir"], local_files_only=True)


class LazyModelMixin:
    """Gives a service `get_model()`, which loads `model_id` on its first call.

    Put it first among the bases; its `__init__` passes every argument on to the next class, so the
    documented form works unchanged::

        class MyEmbedder(LazyModelMixin, BaseBatchInferenceService):
            model_id = "sentence-transformers/all-MiniLM-L6-v2"

            def __init__(self, **kwargs):
                super().__init__(**kwargs)

            def _process_batch(self, batch):
                model, tokenizer = self.get_model()
                ...
    """

    model_id: str | None = None
    model_class: Any = "AutoModel"
    tokenizer_class: Any = "AutoTokenizer"
    torch_dtype: Any = None
    model_source: str = "huggingface"
    """`huggingface`: `model_id` is a Hugging Face id, loaded offline (`load_hf_model`);
    `namespace`: `model_id` is a model uploaded to this namespace's registry and deployed
    (`load_namespace_model`), turned into a model by `_instantiate_model`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._model = getattr(self, "_model", None)
        self._tokenizer = getattr(self, "_tokenizer", None)
        self._model_lock = threading.Lock()
        mro = type(self).__mro__
        if mro[mro.index(LazyModelMixin) + 1] is object:
            # Nothing after us takes arguments: keep the config the way the service bases do
            # (without clobbering one a base listed before us has already set).
            if args or "config" in kwargs or not hasattr(self, "config"):
                self.config = kwargs.pop("config", args[0] if args else None)
            super().__init__()
        else:
            super().__init__(*args, **kwargs)

    def get_model(self) -> tuple[Any, Any]:
        """`(model, tokenizer)`, loaded on the first call and reused afterwards (thread-safe)."""
        if getattr(self, "_model", None) is None:
            lock = self.__dict__.setdefault("_model_lock", threading.Lock())
            with lock:
                if getattr(self, "_model", None) is None:
                    if not self.model_id:
                        raise PermanentError(
                            f"{type(self).__name__}.model_id is not set: name the model to load as a class attribute",
                            details={"service": type(self).__name__},
                        )
                    if self.model_source == "namespace":
                        from engine.models.namespace import load_namespace_model

                        model, tokenizer = self._instantiate_model(load_namespace_model(self.model_id))
                    elif self.model_source == "huggingface":
                        model, tokenizer = build_model(self.model_id, self.model_class, self.tokenizer_class, self.torch_dtype,
                                                       device=self._detect_device())
                    else:
                        raise PermanentError(
                            f"{type(self).__name__}.model_source is {self.model_source!r}; use 'huggingface' or 'namespace'",
                            details={"service": type(self).__name__})
                    self._tokenizer = tokenizer
                    self._model = model
        return self._model, getattr(self, "_tokenizer", None)

    def _detect_device(self) -> str:
        """Where the model runs: the GPU Ray gave this worker, else CPU (`select_device`)."""
        return select_device()

    def _instantiate_model(self, weights: Any) -> tuple[Any, Any]:
        """`(model, tokenizer)` from a namespace model. Override it for architectures of your own;
        the default is `instantiate_namespace_model`."""
        return instantiate_namespace_model(
            weights, model_id=str(self.model_id), model_class=self.model_class, tokenizer_class=self.tokenizer_class,
            torch_dtype=self.torch_dtype, device=self._detect_device(), owner=type(self).__name__)


def instantiate_namespace_model(
    weights: Any, *, model_id: str, model_class: Any, tokenizer_class: Any = None, torch_dtype: Any = None,
    device: str | None = None, owner: str = "service",
) -> tuple[Any, Any]:
    """`(model, tokenizer)` from what `load_namespace_model` answered: a state_dict goes into
    `model_class()` (a `torch.nn.Module` subclass that takes no arguments), in eval mode on
    `device`; a Hugging Face folder is loaded with `model_class.from_pretrained` (and
    `tokenizer_class`, when set); ONNX bytes or an ONNX path are returned as they are, without a
    tokenizer."""
    import torch

    if isinstance(weights, (bytes, bytearray)) or (hasattr(weights, "suffix") and str(weights).endswith(".onnx")):
        return weights, None
    device = device or select_device()
    if hasattr(weights, "is_dir") and weights.is_dir():
        cls = resolve_class(model_class, "model_class")
        model = cls.from_pretrained(str(weights), local_files_only=True, **_dtype(torch_dtype)).to(device).eval()
        tokenizer = None
        if tokenizer_class is not None:
            tokenizer = resolve_class(tokenizer_class, "tokenizer_class").from_pretrained(str(weights), local_files_only=True)
        return model, tokenizer
    if not (isinstance(model_class, type) and issubclass(model_class, torch.nn.Module)):
        raise PermanentError(
            f"{owner}: namespace model {model_id!r} is a state_dict; set model_class to the "
            "torch.nn.Module class it belongs to, or override _instantiate_model(weights)",
            details={"service": owner, "model_id": model_id})
    model = model_class()
    model.load_state_dict(weights)
    return model.to(device).eval(), None


def namespace_models_of(service_class: Any) -> list[str]:
    """The namespace models a service class loads, as it names them: the mixin's `model_id` when
    `model_source` is "namespace", and every method decorated with
    `@lazy_model(..., model_source="namespace")`. Ingest gives such steps the models' resource hints."""
    refs: list[str] = []
    if getattr(service_class, "model_source", None) == "namespace" and getattr(service_class, "model_id", None):
        refs.append(str(service_class.model_id))
    for klass in getattr(service_class, "__mro__", ()):
        for value in vars(klass).values():
            declared = getattr(value, "__sluice_model__", None)
            if isinstance(declared, dict) and declared.get("model_source") == "namespace" and declared["model_id"] not in refs:
                refs.append(declared["model_id"])
    return refs


def _dtype(torch_dtype: Any) -> dict[str, Any]:
    dtype = resolve_dtype(torch_dtype)
    return {"torch_dtype": dtype} if dtype is not None else {}


def lazy_model(
    model_id: str,
    model_class: Any = "AutoModel",
    tokenizer_class: Any = "AutoTokenizer",
    torch_dtype: Any = None,
    model_source: str = "huggingface",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a method so that `self._model` and `self._tokenizer` are loaded (when they are None)
    before its first call. Works on plain and `async` methods; an async method loads in a thread so
    the event loop keeps serving meanwhile.

    `model_source="namespace"`: `model_id` (an id, `name@alias` or `name@X.Y.Z`) is a model
    uploaded to this namespace's registry and deployed; its weights come from the object store
    and become a model through the class's own `_instantiate_model(self, weights)` when it defines
    one, else `instantiate_namespace_model` with this decorator's arguments (on the instance's
    `_detect_device()` when it has one)."""
    if model_source not in ("huggingface", "namespace"):
        raise ValueError(f"lazy_model({model_id!r}): model_source is {model_source!r}; use 'huggingface' or 'namespace'")
    lock = threading.Lock()
    namespace = model_source == "namespace"

    def missing(self: Any) -> tuple[bool, bool]:
        no_model = getattr(self, "_model", None) is None
        # a namespace model brings its tokenizer with it (a folder) or has none (weights, ONNX)
        no_tokenizer = not namespace and tokenizer_class is not None and getattr(self, "_tokenizer", None) is None
        return no_model, no_tokenizer

    def load_namespace(self: Any) -> tuple[Any, Any]:
        from engine.models.namespace import load_namespace_model

        weights = load_namespace_model(model_id)
        custom = getattr(type(self), "_instantiate_model", None)
        if custom is not None and custom is not LazyModelMixin._instantiate_model:
            return custom(self, weights)
        detect = getattr(self, "_detect_device", None)
        return instantiate_namespace_model(
            weights, model_id=model_id, model_class=model_class, tokenizer_class=tokenizer_class, torch_dtype=torch_dtype,
            device=detect() if callable(detect) else None, owner=type(self).__name__)

    def ensure_loaded(self: Any) -> None:
        if not any(missing(self)):
            return
        with lock:
            no_model, no_tokenizer = missing(self)
            if no_model:
                if namespace:
                    model, tokenizer = load_namespace(self)
                else:
                    model, tokenizer = build_model(model_id, model_class, tokenizer_class, torch_dtype)
                self._model = model
                if no_tokenizer or (namespace and getattr(self, "_tokenizer", None) is None):
                    self._tokenizer = tokenizer
            elif no_tokenizer:
                self._tokenizer = _load_tokenizer(load_hf_model(model_id, model_class, tokenizer_class, torch_dtype), tokenizer_class)

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                await asyncio.to_thread(ensure_loaded, self)
                return await method(self, *args, **kwargs)

            wrapped = async_wrapper
        else:

            @functools.wraps(method)
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                ensure_loaded(self)
                return method(self, *args, **kwargs)

            wrapped = wrapper
        wrapped.__sluice_model__ = {"model_id": model_id, "model_source": model_source}  # type: ignore[attr-defined]
        return wrapped

    return decorate
