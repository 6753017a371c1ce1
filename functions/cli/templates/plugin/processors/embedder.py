"""{{name}}: embed the text rows of a batch with the platform's all-MiniLM-L6-v2 service."""

from dataclasses import dataclass

import pandas as pd

from shared.inference.registry import InferenceConfigs, get_batch_service

from ..manifest import FEATURE_NAME, MODEL_ID


@dataclass
class EmbedderConfig:
    text_column: str = "data"
    output_column: str = FEATURE_NAME
    batch_size: int = 64
    normalize: bool = True


class Embedder:
    """One instance per worker; called with one DataFrame per batch. Rows that are not text
    (blob_type other than "text") pass through with no vector."""

    def __init__(self, config: EmbedderConfig):
        self.config = config
        self._service = None  # built on the first batch: the model loads once per worker

    def _embed(self, texts: pd.DataFrame) -> list:
        if self._service is None:
            service_class = get_batch_service(MODEL_ID)
            self._service = service_class(InferenceConfigs(
                text_column=self.config.text_column,
                output_column_name=self.config.output_column,
                batch_size=self.config.batch_size,
                normalize=self.config.normalize,
            ))
        return self._service(texts)[self.config.output_column].tolist()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        if "blob_type" in batch.columns:
            is_text = batch["blob_type"].eq("text").tolist()
        else:
            is_text = [True] * len(batch)
        vectors = [None] * len(batch)
        positions = [i for i, text in enumerate(is_text) if text]
        if positions:
            texts = batch.iloc[positions][[self.config.text_column]].reset_index(drop=True)
            for position, vector in zip(positions, self._embed(texts)):
                vectors[position] = vector
        out[self.config.output_column] = pd.Series(vectors, index=out.index, dtype=object)
        return out
