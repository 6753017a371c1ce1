"""{{name}}: what the plugin is, what it takes, what it produces.

Sluice reads this file before anything else (on `sluice plugin test` and on every push). Keep it
cheap to import: no models, no network, only pydantic and constants.
"""

from pydantic import BaseModel, ConfigDict, Field

FEATURE_NAME = "{{name}}_embedding"
"""The vector index this plugin fills, and the DataFrame column the pipeline writes it to."""
EMBEDDING_DIM = 384
"""all-MiniLM-L6-v2 produces 384 numbers per text."""
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class TextInput(BaseModel):
    """What the plugin accepts: one text (a text object's content arrives in the `data` column)."""

    text: str = Field(..., description="The text to embed.")


class EmbeddingOutput(BaseModel):
    """What the plugin adds to each row."""

    model_config = ConfigDict(populate_by_name=True)

    embedding: list[float] = Field(
        ..., alias=FEATURE_NAME, min_length=EMBEDDING_DIM, max_length=EMBEDDING_DIM,
        description="384-dimensional, L2-normalised sentence embedding.",
    )


class Parameters(BaseModel):
    """Settings a collection may override. Every parameter needs a default."""

    text_column: str = Field(default="data", description="DataFrame column holding the text to embed.")
    batch_size: int = Field(default=64, ge=1, le=1024, description="Texts per forward pass.")
    normalize: bool = Field(default=True, description="L2-normalise the vectors (cosine similarity = dot product).")


metadata = {
    "feature_extractor_name": "{{name}}",
    "version": "1.0.0",
    "description": "Sentence embeddings of text objects with all-MiniLM-L6-v2.",
    "category": "text",
}

input_schema = TextInput
output_schema = EmbeddingOutput
parameter_schema = Parameters
supported_input_types = ["text"]

# One entry per vector index; exactly these four keys.
features = [
    {
        "feature_type": "embedding",
        "feature_name": FEATURE_NAME,
        "embedding_dim": EMBEDDING_DIM,
        "distance_metric": "cosine",
    },
]
