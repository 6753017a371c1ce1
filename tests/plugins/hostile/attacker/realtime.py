"""The same attacks from a realtime service: the targets come with each request's parameters."""
from shared.plugins.inference.serve import BaseInferenceService

from .processors.attack import Attacker


class InferenceService(BaseInferenceService):
    async def run_inference(self, inputs, parameters):
        attacker = Attacker({"dim": 32, "targets": (parameters or {}).get("targets") or {}})
        return {"hash_embedding": attacker.embed(str(inputs.get("text", ""))), "attack": attacker.attacks()}
