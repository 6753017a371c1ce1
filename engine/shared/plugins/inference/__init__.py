"""`shared.plugins.inference`: the base classes of batch and realtime services."""

from engine.shared.plugins.inference.batch import BaseBatchInferenceService
from engine.shared.plugins.inference.serve import BaseInferenceService

__all__ = ["BaseBatchInferenceService", "BaseInferenceService"]
