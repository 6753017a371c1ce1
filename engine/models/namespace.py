"""Models uploaded to a namespace's model registry, by id.

The registry is a later piece of work: when it exists, its worker setup installs a resolver with
`set_namespace_model_resolver`. Until then (and in any process where nothing installed one),
`load_namespace_model` fails with an error that says so, instead of guessing at a location.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from engine.models.errors import ModelNotAvailable

__all__ = ["load_namespace_model", "set_namespace_model_resolver"]

_resolver: Callable[[str], Any] | None = None
_lock = threading.Lock()


def set_namespace_model_resolver(resolver: Callable[[str], Any] | None) -> None:
    """Install the function that turns a registry model id into a loaded model (None removes it)."""
    if resolver is not None and not callable(resolver):
        raise TypeError(f"a namespace model resolver must be callable or None, got {type(resolver).__name__}")
    global _resolver
    with _lock:
        _resolver = resolver


def load_namespace_model(model_id: str) -> Any:
    """The model `model_id` from the namespace's model registry, as the installed resolver returns it."""
    with _lock:
        resolver = _resolver
    if resolver is None:
        raise ModelNotAvailable(
            model_id,
            "no model registry is configured in this process, so namespace models cannot be loaded here. "
            "Use load_hf_model() with a model installed on the workers, or run where the model registry is set up.",
        )
    return resolver(model_id)
