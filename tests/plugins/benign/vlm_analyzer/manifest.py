from typing import List

from pydantic import BaseModel, Field


class VlmInput(BaseModel):
    url: str


class VlmOutput(BaseModel):
    caption: str
    tags: List[str]
    caption_embedding: List[float]


class VlmParams(BaseModel):
    provider: str = Field(default="openai")
    model: str = Field(default="gpt-4o-mini")
    instruction: str = Field(
        default="Describe the image in one sentence, then list up to five tags after 'Tags:'.",
    )
    max_concurrency: int = Field(default=4, ge=1, le=16)


metadata = {
    "feature_extractor_name": "vlm_analyzer",
    "version": "0.3.0",
    "description": "Captions and tags images with a vision-language model through container.llm",
    "category": "image",
}

input_schema = VlmInput
output_schema = VlmOutput
parameter_schema = VlmParams
supported_input_types = ["image"]

features = [
    {"feature_type": "embedding", "feature_name": "caption_embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
