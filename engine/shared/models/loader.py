"""`shared.models.loader.load_namespace_model`: the same function as `engine.models.load_namespace_model`."""

from engine.models import load_namespace_model

__all__ = ["load_namespace_model"]
