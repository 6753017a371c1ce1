from typing import List

from pydantic import BaseModel, Field


class ServiceInput(BaseModel):
    text: str


class ServiceOutput(BaseModel):
    minilm_embedding: List[float]
    word_count: int


class ServiceParams(BaseModel):
    batch_size: int = Field(default=64, ge=1, le=512)
    lowercase: bool = False


metadata = {
    "feature_extractor_name": "batch_service_embedder",
    "version": "1.0.0",
    "description": "Composes the built-in MiniLM batch service with a cleaning step",
    "category": "text",
}

input_schema = ServiceInput
output_schema = ServiceOutput
parameter_schema = ServiceParams
supported_input_types = ["text"]

features = [
    {"feature_type": "embedding", "feature_name": "minilm_embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
