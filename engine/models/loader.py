"""`engine.models.loader.load_namespace_model`: the import path the hosted product's model docs use."""

from engine.models.namespace import load_namespace_model

__all__ = ["load_namespace_model"]
