from dataclasses import dataclass
from typing import List

import pandas as pd
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from shared.plugins import open_asset


@dataclass
class ClipConfig:
    model_name: str = "openai/clip-vit-base-patch32"
    half: bool = False


class _ClipBase:
    _shared = {}

    def __init__(self, config: ClipConfig, **kwargs):
        self.config = config
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def _components(self):
        key = (self.config.model_name, self.device)
        if key not in self._shared:
            model = CLIPModel.from_pretrained(self.config.model_name).eval().to(self.device)
            if self.config.half and self.device == "cuda":
                model = model.half()
            self._shared[key] = (model, CLIPProcessor.from_pretrained(self.config.model_name))
        return self._shared[key]

    @staticmethod
    def _normalise(vectors: torch.Tensor) -> List[List[float]]:
        return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().tolist()


class ClipTextEncoder(_ClipBase):
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        model, processor = self._components()
        inputs = processor(text=batch["data"].astype(str).tolist(), return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            vectors = model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
        batch["clip_embedding"] = self._normalise(vectors)
        return batch


class ClipImageEncoder(_ClipBase):
    def _load(self, url: str) -> Image.Image:
        with open_asset(url) as path:
            with Image.open(path) as img:
                return img.convert("RGB")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        model, processor = self._components()
        images = [self._load(url) for url in batch["data"].tolist()]
        inputs = processor(images=images, return_tensors="pt")
        with torch.no_grad():
            vectors = model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        batch["clip_embedding"] = self._normalise(vectors)
        return batch
