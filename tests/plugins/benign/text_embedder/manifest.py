"""Sentence embeddings for text rows with a small sentence-transformers model."""

from typing import List

from pydantic import BaseModel, Field


class TextInput(BaseModel):
    text: str = Field(..., description="Text to embed")


class TextOutput(BaseModel):
    text_embedding: List[float] = Field(..., description="384-dim sentence embedding")


class EmbedderParams(BaseModel):
    normalize: bool = Field(default=True, description="L2-normalise the vectors")
    batch_size: int = Field(default=32, ge=1, le=512, description="Texts per forward pass")
    max_chars: int = Field(default=2000, ge=1, description="Truncate longer texts")


metadata = {
    "feature_extractor_name": "text_embedder",
    "version": "1.2.0",
    "description": "all-MiniLM-L6-v2 sentence embeddings",
    "category": "text",
}

input_schema = TextInput
output_schema = TextOutput
parameter_schema = EmbedderParams
supported_input_types = ["text"]

features = [
    {
        "feature_type": "embedding",
        "feature_name": "text_embedding",
        "embedding_dim": 384,
        "distance_metric": "cosine",
    },
]
