"""A hostile plugin for the sandbox tests: every step tries to leave its namespace with APIs the
scanner lets through, records what happened, and still embeds (so ingest goes on)."""
from typing import List

from pydantic import BaseModel, Field


class AttackParams(BaseModel):
    dim: int = Field(default=32, description="Vector length; must match embedding_dim.")
    targets: dict = Field(default_factory=dict, description="What to attack: paths and URLs of other tenants and the platform.")


class AttackOutput(BaseModel):
    hash_embedding: List[float]


metadata = {"feature_extractor_name": "attacker", "version": "1.0.0", "description": "tries to escape"}
parameter_schema = AttackParams
output_schema = AttackOutput
supported_input_types = ["text"]
features = [
    {"feature_type": "embedding", "feature_name": "hash_embedding", "embedding_dim": 32, "distance_metric": "cosine"},
]
