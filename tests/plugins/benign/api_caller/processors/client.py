import logging
import random
import time
from dataclasses import dataclass, field
from typing import List

import httpx
import pandas as pd

log = logging.getLogger(__name__)
RETRYABLE = {429, 500, 502, 503, 504}


@dataclass
class ApiConfig:
    endpoint: str
    model: str
    api_key: str = field(repr=False, default="")
    timeout_s: float = 30.0
    retries: int = 3


class ApiEmbedder:
    def __init__(self, config: ApiConfig, **kwargs):
        self.config = config
        self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
            self._client = httpx.Client(timeout=self.config.timeout_s, headers=headers)
        return self._client

    def _post(self, texts: List[str]) -> dict:
        for attempt in range(self.config.retries + 1):
            try:
                response = self.client.post(self.config.endpoint, json={"model": self.config.model, "input": texts})
                if response.status_code not in RETRYABLE:
                    response.raise_for_status()
                    return response.json()
                log.warning("%s: HTTP %s, attempt %d", self.__class__.__name__, response.status_code, attempt + 1)
            except httpx.TransportError as exc:
                log.warning("transport error %s, attempt %d", exc, attempt + 1)
            time.sleep(min(2 ** attempt, 10) + random.random() / 4)
        raise RuntimeError(f"{self.config.endpoint} kept failing after {self.config.retries + 1} attempts")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        texts = batch["data"].fillna("").astype(str).tolist()
        body = self._post(texts)
        rows = sorted(body.get("data", []), key=lambda item: item.get("index", 0))
        batch["api_embedding"] = [row["embedding"] for row in rows]
        batch["model"] = body.get("model", self.config.model)
        return batch
