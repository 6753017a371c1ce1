import os
from typing import Any, Dict

import numpy as np
import onnxruntime as ort
import pandas as pd
from transformers import AutoTokenizer

from shared.plugins import download_asset


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float32)
    summed = (hidden * mask).sum(axis=1)
    return summed / np.clip(mask.sum(axis=1), 1e-9, None)


class OnnxEmbedder:
    def __init__(self, config: Dict[str, Any], **kwargs):
        self.config = config
        self._session = None
        self._tokenizer = None

    def _ensure_loaded(self) -> None:
        if self._session is not None:
            return
        options = ort.SessionOptions()
        if self.config.get("threads"):
            options.intra_op_num_threads = int(self.config["threads"])
        path, is_temp = download_asset(self.config["model_url"], suffix=".onnx")
        try:
            self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        finally:
            if is_temp and os.path.exists(path):
                os.unlink(path)
        self._tokenizer = AutoTokenizer.from_pretrained(self.config["tokenizer_name"])

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        self._ensure_loaded()
        texts = batch["data"].fillna("").astype(str).tolist()
        enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.config["max_length"], return_tensors="np")
        wanted = {i.name for i in self._session.get_inputs()}
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in wanted}
        hidden = self._session.run(None, feeds)[0]
        pooled = mean_pool(hidden, enc["attention_mask"])
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True).clip(min=1e-12)
        batch["onnx_embedding"] = pooled.tolist()
        return batch
