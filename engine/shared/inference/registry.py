"""`shared.inference.registry.get_batch_service(id)`: built-in batch services plugins compose.

The hosted product documents several services by model id. Sluice implements those it can run
offline (today `sentence-transformers/all-MiniLM-L6-v2`, which ships with the install); the other
documented ids fail with `ServiceNotAvailable`, which lists what is available, rather than trying
to download anything.
"""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from engine.shared.plugins.inference.batch import BaseBatchInferenceService
from events.errors import InvalidInput, NotFound

__all__ = ["InferenceConfigs", "MiniLMBatch", "ServiceNotAvailable", "available_batch_services", "get_batch_service"]


class ServiceNotAvailable(NotFound):
    """A batch service id this install cannot provide; `details` names it and the available ones."""

    error_type = "service_not_available"


class InferenceConfigs(BaseModel):
    """Configuration of the MiniLM embedding service (the hosted product's field names)."""

    model_config = ConfigDict(extra="forbid")

    text_column: str = Field(default="data", description="Column holding the text to embed.")
    output_column_name: str = Field(default="embedding", description="Column the 384-d vectors are written to.")
    batch_size: int = Field(default=64, ge=1, description="Texts per forward pass.")
    normalize: bool = Field(default=True, description="L2-normalise the vectors (cosine similarity = dot product).")


MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIMENSIONS = 384


class MiniLMBatch(BaseBatchInferenceService):
    """Embeds `batch[text_column]` with all-MiniLM-L6-v2 into `output_column_name` (384 floats a
    row; missing text embeds as the empty string). The model loads on the first batch, once per
    instance, on `select_device()`."""

    def __init__(self, config: InferenceConfigs | dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = kwargs.pop("config", config)
        if config is None:
            config = InferenceConfigs()
        elif isinstance(config, dict):
            config = InferenceConfigs(**config)
        elif not isinstance(config, InferenceConfigs):
            raise InvalidInput(
                f"MiniLMBatch takes InferenceConfigs or a dict, got {type(config).__name__}",
                details={"config_type": type(config).__name__},
            )
        super().__init__(config=config, **kwargs)
        self.config: InferenceConfigs = config
        self._model: Any = None
        self._lock = threading.Lock()

    def _encoder(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _minilm()
        return self._model

    def _process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        column = self.config.text_column
        if column not in batch.columns:
            raise InvalidInput(
                f"MiniLMBatch: the batch has no {column!r} column (columns: {list(map(str, batch.columns))})",
                details={"column": column},
            )
        out = batch.copy()
        texts = batch[column].fillna("").astype(str).tolist()
        if not texts:
            out[self.config.output_column_name] = pd.Series([], dtype=object)
            return out
        vectors = self._encoder().encode(
            texts,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out[self.config.output_column_name] = pd.Series([row.astype(float).tolist() for row in vectors], index=out.index, dtype=object)
        return out


_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _minilm() -> Any:
    """all-MiniLM-L6-v2 on `select_device()`, loaded once per process: every instance of the
    service in this process (one plugin host: one namespace) shares it, read-only."""
    from engine.models import resolve_model_dir, select_device

    device = select_device()
    with _MODELS_LOCK:
        if device not in _MODELS:
            from sentence_transformers import SentenceTransformer

            path = resolve_model_dir(MINILM_ID)
            _MODELS[device] = SentenceTransformer(str(path), device=device, local_files_only=True)
        return _MODELS[device]


def loaded_services() -> list[str]:
    """The batch services whose models this process has loaded."""
    return [MINILM_ID] if _MODELS else []


def preload_service(service_id: str) -> bool:
    """Load the model of batch service `service_id` into this process (a spare plugin host, before
    any plugin code runs); False when it is not one whose model can be preloaded."""
    if service_id != MINILM_ID:
        return False
    _minilm()
    return True


_SERVICES: dict[str, type[BaseBatchInferenceService]] = {
    MINILM_ID: MiniLMBatch,
    "all-MiniLM-L6-v2": MiniLMBatch,
}

_DOCUMENTED_ELSEWHERE = frozenset({
    "intfloat/multilingual-e5-large-instruct",
    "google/siglip-base-patch16-224",
    "openai/whisper-large-v3-turbo",
    "jinaai/jina-embeddings-v2-base-code",
    "BAAI/bge-reranker-v2-m3",
})
"""Ids the hosted product documents that need model weights this install does not carry."""


def available_batch_services() -> list[str]:
    """The service ids `get_batch_service` accepts here, sorted."""
    return sorted(_SERVICES)


def get_batch_service(service_id: str) -> type[BaseBatchInferenceService]:
    """The batch service class for `service_id`; use it as a `StepDefinition.service_class`."""
    service = _SERVICES.get(service_id)
    if service is not None:
        return service
    available = available_batch_services()
    if service_id in _DOCUMENTED_ELSEWHERE:
        reason = "is documented by the hosted product but its model is not installed in this Sluice (models load offline only)"
    else:
        reason = "is not a known batch service"
    raise ServiceNotAvailable(
        f"batch service {service_id!r} {reason}; available: {', '.join(available)}",
        details={"service_id": service_id, "available": available},
    )
