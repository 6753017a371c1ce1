import asyncio

from shared.plugins.inference.serve import BaseInferenceService

from .processors.core import encode, language_hint


class InferenceService(BaseInferenceService):
    """Real-time endpoint: {"text": ...} -> {"embedding": [...], "language_hint": ...}."""

    def __init__(self):
        super().__init__()

    async def __call__(self, inputs: dict, parameters: dict) -> dict:
        text = str(inputs.get("text", ""))
        normalize = bool(parameters.get("normalize", True))
        vectors = await asyncio.to_thread(encode, [text], normalize)
        return {"embedding": vectors[0], "language_hint": language_hint(text)}
