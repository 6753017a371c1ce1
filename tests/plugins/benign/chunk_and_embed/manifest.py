from typing import List

from pydantic import BaseModel, Field, model_validator


class ChunkInput(BaseModel):
    text: str


class ChunkOutput(BaseModel):
    chunk_text: str
    chunk_index: int
    chunk_embedding: List[float]


class ChunkParams(BaseModel):
    chunk_size: int = Field(default=800, ge=50, le=8000, description="Characters per chunk")
    overlap: int = Field(default=100, ge=0, description="Characters shared by neighbouring chunks")

    @model_validator(mode="after")
    def _overlap_smaller_than_chunk(self):
        if self.overlap >= self.chunk_size:
            raise ValueError("overlap must be smaller than chunk_size")
        return self


metadata = {
    "feature_extractor_name": "chunk_and_embed",
    "version": "1.1.0",
    "description": "Splits long documents into overlapping chunks and embeds each chunk",
    "category": "text",
}

input_schema = ChunkInput
output_schema = ChunkOutput
parameter_schema = ChunkParams
supported_input_types = ["text", "pdf"]

features = [
    {"feature_type": "embedding", "feature_name": "chunk_embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
