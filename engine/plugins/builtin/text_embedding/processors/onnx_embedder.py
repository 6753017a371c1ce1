"""Embed each row's text with all-MiniLM-L6-v2 through `engine.encoders.minilm`.

The encoder (ONNX Runtime on CPU, CUDA or torch on a GPU) is built on the first batch, not when
the step is constructed, and once per process: every embedder instance and the realtime service
of a worker share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from engine.encoders.minilm import EMBEDDING_DIM, MiniLMEncoder, shared_encoder


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


@dataclass(frozen=True)
class EmbedderConfig:
    batch_size: int = 64
    precision: str = "auto"
    device: str | None = None
    """"cuda" on a GPU step; None chooses with select_device(). A GPU step that falls back to a
    CPU worker finds no CUDA device and runs on CPU."""
    text_column: str = "data"
    output_column: str = "text_embedding"


class OnnxEmbedder:
    """Writes `output_column`: a list of 384 floats of length 1 for every row."""

    dim = EMBEDDING_DIM

    def __init__(self, config: EmbedderConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = EmbedderConfig()
        elif isinstance(config, Mapping):
            config = EmbedderConfig(**config)
        self.config = config
        self._encoder: MiniLMEncoder | None = None

    @property
    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = shared_encoder(precision=self.config.precision, device=self.config.device)
        return self._encoder

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        column = self.config.text_column
        if column not in batch.columns:
            raise KeyError(f"the batch has no {column!r} column (columns: {', '.join(map(str, batch.columns))})")
        out = batch.copy()
        texts = [_as_text(value) for value in batch[column].tolist()]
        if not texts:
            out[self.config.output_column] = pd.Series([], dtype=object)
            return out
        vectors = self.encoder.encode(texts, batch_size=self.config.batch_size)
        out[self.config.output_column] = pd.Series([row.tolist() for row in vectors], index=out.index, dtype=object)
        return out
