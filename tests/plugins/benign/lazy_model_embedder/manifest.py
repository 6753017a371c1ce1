from typing import List

from pydantic import BaseModel, Field


class LazyInput(BaseModel):
    text: str


class LazyOutput(BaseModel):
    lazy_embedding: List[float]


class LazyParams(BaseModel):
    max_length: int = Field(default=256, ge=8, le=512)
    pooling: str = Field(default="mean", pattern="^(mean|cls)$")


metadata = {
    "feature_extractor_name": "lazy_model_embedder",
    "version": "0.2.0",
    "description": "Transformer embeddings through LazyModelMixin",
    "category": "text",
}

input_schema = LazyInput
output_schema = LazyOutput
parameter_schema = LazyParams
supported_input_types = ["text"]

features = [
    {"feature_type": "embedding", "feature_name": "lazy_embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
