"""CLIP embeddings in one shared space for images and text, so text can search images."""

from typing import List, Literal

from pydantic import BaseModel, Field


class ClipInput(BaseModel):
    data: str = Field(..., description="Text, or the URL of an image")
    mime_type: str = Field(default="text/plain")


class ClipOutput(BaseModel):
    clip_embedding: List[float]


class ClipParams(BaseModel):
    model_name: str = Field(default="openai/clip-vit-base-patch32")
    precision: Literal["fp32", "fp16"] = "fp32"


metadata = {
    "feature_extractor_name": "clip_multimodal",
    "version": "1.0.3",
    "description": "CLIP ViT-B/32 text and image embeddings",
    "category": "multimodal",
}

input_schema = ClipInput
output_schema = ClipOutput
parameter_schema = ClipParams
supported_input_types = ["text", "image"]

features = [
    {"feature_type": "embedding", "feature_name": "clip_embedding", "embedding_dim": 512, "distance_metric": "cosine"},
]
