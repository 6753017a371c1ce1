"""`shared.models`: models from the namespace's model registry."""

from engine.shared.models.loader import load_namespace_model

__all__ = ["load_namespace_model"]
