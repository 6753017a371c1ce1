from typing import List

from pydantic import BaseModel, Field


class RtInput(BaseModel):
    text: str = Field(..., max_length=10_000)


class RtOutput(BaseModel):
    embedding: List[float]
    language_hint: str


class RtParams(BaseModel):
    normalize: bool = True


metadata = {
    "feature_extractor_name": "realtime_embedder",
    "version": "1.4.2",
    "description": "Batch and real-time MiniLM embeddings sharing one encoder",
    "category": "text",
}

input_schema = RtInput
output_schema = RtOutput
parameter_schema = RtParams
supported_input_types = ["text"]

features = [
    {"feature_type": "embedding", "feature_name": "embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
