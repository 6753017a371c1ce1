import pandas as pd
import torch

from engine.models import LazyModelMixin
from shared.plugins.inference.batch import BaseBatchInferenceService


class LazyEmbedder(LazyModelMixin, BaseBatchInferenceService):
    """The documented pattern: the mixin loads model and tokenizer on the first batch."""

    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    model_class = "AutoModel"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def _process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        model, tokenizer = self.get_model()
        texts = batch["data"].fillna("").astype(str).tolist()
        enc = tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        batch["lazy_embedding"] = torch.nn.functional.normalize(pooled, dim=-1).cpu().tolist()
        return batch
