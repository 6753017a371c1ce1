"""The hosted product's `shared.*` SDK paths, so its plugins import unchanged.

The plugin loader aliases `shared` to `engine.shared`, so `from shared.plugins.inference.batch import
BaseBatchInferenceService` in a plugin resolves here. Keep these modules thin: they re-export the
Sluice implementations under the documented names.
"""

__all__ = ["inference", "models", "plugins", "utilities"]
