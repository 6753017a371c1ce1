"""{{name}}: the realtime endpoint. `await service(inputs, parameters)` embeds a query with the
same model as the batch pipeline, so query and document vectors are comparable.

    {"text": "a query"}          -> {"embedding": [384 floats]}
    {"texts": ["a", "b"]}        -> {"embeddings": [[384 floats], [384 floats]]}
"""

import asyncio

import pandas as pd

from shared.inference.registry import InferenceConfigs, get_batch_service
from shared.plugins.inference.serve import BaseInferenceService

from .manifest import MODEL_ID


class InferenceService(BaseInferenceService):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._services = {}  # one per `normalize` setting, built on first use (lazy model load)

    def _embed(self, texts: list, normalize: bool) -> list:
        service = self._services.get(normalize)
        if service is None:
            service_class = get_batch_service(MODEL_ID)
            service = service_class(InferenceConfigs(text_column="data", output_column_name="embedding", normalize=normalize))
            self._services[normalize] = service
        return service(pd.DataFrame({"data": texts}))["embedding"].tolist()

    async def __call__(self, inputs: dict, parameters: dict = None) -> dict:
        parameters = parameters or {}
        normalize = bool(parameters.get("normalize", True))
        if "text" in inputs:
            vectors = await asyncio.to_thread(self._embed, [str(inputs["text"] or "")], normalize)
            return {"embedding": vectors[0]}
        texts = inputs.get("texts")
        if not isinstance(texts, list):
            raise ValueError('send {"text": "..."} or {"texts": ["...", ...]}')
        vectors = await asyncio.to_thread(self._embed, [str(t or "") for t in texts], normalize)
        return {"embeddings": vectors}
