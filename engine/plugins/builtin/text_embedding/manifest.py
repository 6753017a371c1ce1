"""text_embedding: chunk text and embed each chunk with all-MiniLM-L6-v2 (384 dimensions, cosine)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

metadata = {
    "feature_extractor_name": "text_embedding",
    "version": "1.0.0",
    "description": (
        "Splits text into overlapping chunks at paragraph, sentence or word boundaries and embeds each "
        "chunk with all-MiniLM-L6-v2 through ONNX Runtime (one document per chunk)."
    ),
    "category": "text",
}


class TextEmbeddingParams(BaseModel):
    """The collection's parameters for text_embedding."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(default=1000, ge=50, description="Most characters in one chunk.")
    chunk_overlap: int = Field(
        default=100, ge=0, description="Characters a chunk repeats from the end of the one before; less than chunk_size."
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Chunks per inference batch.")
    precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="auto: int8 on CPU only where it matches fp32 (cosine of at least 0.99 on a calibration set), else fp32.",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "TextEmbeddingParams":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size}): "
                "each chunk has to move forward through the text"
            )
        return self


class TextEmbeddingOutput(BaseModel):
    """The columns each output row (one per chunk) carries besides the production columns."""

    text_embedding: list[float] = Field(description="384 numbers, L2-normalised.")
    chunk_index: int = Field(description="Position of the chunk in its text, from 0.")
    chunk_count: int = Field(description="Chunks the text was split into.")
    chunk_start: int = Field(description="Offset of the chunk's first character in the original text.")
    chunk_end: int = Field(description="Offset just past the chunk's last character: text[chunk_start:chunk_end] is the chunk.")
    parent_document_id: str = Field(description="document_id of the original text; the chunk's own is '<parent>:<chunk_index>'.")


parameter_schema = TextEmbeddingParams
output_schema = TextEmbeddingOutput
supported_input_types = ["text"]
features = [
    {"feature_type": "embedding", "feature_name": "text_embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
