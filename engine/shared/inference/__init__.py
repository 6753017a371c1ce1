"""`shared.inference`: the platform's ready-made batch services, by model id."""

from engine.shared.inference.registry import InferenceConfigs, MiniLMBatch, ServiceNotAvailable, available_batch_services, get_batch_service

__all__ = ["InferenceConfigs", "MiniLMBatch", "ServiceNotAvailable", "available_batch_services", "get_batch_service"]
