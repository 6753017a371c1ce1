import os
from dataclasses import dataclass

import pandas as pd
import torch
import torchvision
from PIL import Image

from shared.plugins import download_asset, open_asset

from ..manifest import LABELS
from .transforms import build_transform


@dataclass
class ClassifierConfig:
    weights_url: str
    top_k: int = 1
    image_size: int = 224


class ImageClassifier:
    def __init__(self, config: ClassifierConfig, **kwargs):
        self.config = config
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.transform = build_transform(config.image_size)
        self._model = None

    def _load(self):
        if self._model is not None:
            return self._model
        model = torchvision.models.resnet18(weights=None)
        model.fc = torch.nn.Linear(model.fc.in_features, len(LABELS))
        path, is_temp = download_asset(self.config.weights_url, suffix=".pt")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        finally:
            if is_temp:
                os.unlink(path)
        model.load_state_dict(state)
        self._model = model.eval().to(self.device)
        return self._model

    def _image(self, url: str) -> torch.Tensor:
        with open_asset(url) as path:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB"))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        model = self._load()
        pixels = torch.stack([self._image(u) for u in batch["data"].tolist()]).to(self.device)
        backbone = torch.nn.Sequential(*list(model.children())[:-1])
        with torch.inference_mode():
            features = backbone(pixels).flatten(1)
            probs = model.fc(features).softmax(dim=-1)
        top = probs.topk(self.config.top_k, dim=-1)
        batch["image_embedding"] = torch.nn.functional.normalize(features, dim=-1).cpu().tolist()
        batch["label"] = [LABELS[i[0]] for i in top.indices.cpu().tolist()]
        batch["score"] = [round(s[0], 4) for s in top.values.cpu().tolist()]
        return batch
