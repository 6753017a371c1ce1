"""Query-time embeddings with the encoder the batch step uses (queries are not chunked).

`await service({"text": "..."})` -> `{"embedding": [384 floats]}`;
`await service({"texts": ["...", ...]})` -> `{"embeddings": [[384 floats], ...]}`; both keys in
one request give both answers.
"""

import asyncio
from typing import Any

import numpy as np

from engine.encoders.minilm import MiniLMEncoder, shared_encoder
from engine.shared.plugins.inference.serve import BaseInferenceService
from events.errors import InvalidInput

MAX_TEXTS = 1024


class TextEmbeddingService(BaseInferenceService):
    """`config` may be a dict with `precision` ("auto", "fp32", "int8") and `device`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder: MiniLMEncoder | None = None

    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            config = self.config if isinstance(self.config, dict) else {}
            self._encoder = shared_encoder(precision=config.get("precision", "auto"), device=config.get("device"))
        return self._encoder

    async def __call__(self, inputs: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(inputs, dict):
            raise InvalidInput(f"inputs must be a dict, got {type(inputs).__name__}", details={"inputs_type": type(inputs).__name__})
        text, texts = inputs.get("text"), inputs.get("texts")
        if text is None and texts is None:
            raise InvalidInput("inputs need 'text' (a string) or 'texts' (a list of strings)", details={"keys": sorted(map(str, inputs))})
        if text is not None and not isinstance(text, str):
            raise InvalidInput(f"'text' must be a string, got {type(text).__name__}", details={"field": "text"})
        if texts is not None:
            if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                raise InvalidInput("'texts' must be a list of strings", details={"field": "texts"})
            if len(texts) > MAX_TEXTS:
                raise InvalidInput(f"'texts' holds {len(texts)} texts; at most {MAX_TEXTS} per request", details={"field": "texts"})
        batch = ([text] if text is not None else []) + list(texts or [])
        encoder = self.encoder()
        vectors: np.ndarray | list[np.ndarray] = await asyncio.to_thread(encoder.encode, batch) if batch else []
        result: dict[str, Any] = {}
        if text is not None:
            result["embedding"] = vectors[0].tolist()
        if texts is not None:
            offset = 1 if text is not None else 0
            result["embeddings"] = [row.tolist() for row in vectors[offset:]]
        return result
