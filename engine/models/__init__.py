"""Model loading for plugins, at the import paths the hosted product documents:
`from engine.models import LazyModelMixin, lazy_model, load_hf_model, select_device`.

Everything here is offline: Sluice runs without internet access, so a model comes from a local
directory, a model bundled with the install, the local Hugging Face cache, or (later) the
namespace's model registry. Nothing is ever downloaded from a hub.

Importing this package is cheap: torch and transformers are imported inside the functions that
need them, so plugin modules that merely import the SDK do not pay for them.
"""

from engine.models.device import select_device
from engine.models.hf import KNOWN_OFFLINE_MODELS, ModelNotAvailable, clear_model_cache, load_hf_model, resolve_model_dir
from engine.models.lazy import LazyModelMixin, build_model, lazy_model
from engine.models.namespace import load_namespace_model, set_namespace_model_resolver

__all__ = [
    "KNOWN_OFFLINE_MODELS",
    "LazyModelMixin",
    "ModelNotAvailable",
    "build_model",
    "clear_model_cache",
    "lazy_model",
    "load_hf_model",
    "load_namespace_model",
    "resolve_model_dir",
    "select_device",
    "set_namespace_model_resolver",
]
