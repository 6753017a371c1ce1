"""ImageNet-style classification plus the penultimate-layer embedding, with torchvision."""

from typing import List

from pydantic import BaseModel, Field


class ImageInput(BaseModel):
    url: str = Field(..., description="s3:// or https:// URL of the image")


class ImageOutput(BaseModel):
    image_embedding: List[float] = Field(..., description="512-dim ResNet-18 pooled features")
    label: str = Field(..., description="Top-1 label")
    score: float = Field(..., description="Top-1 probability")


class ClassifierParams(BaseModel):
    weights_url: str = Field(default="s3://models/resnet18/resnet18.pt", description="State dict saved with torch.save")
    top_k: int = Field(default=1, ge=1, le=5)
    image_size: int = Field(default=224, ge=32, le=1024)


LABELS = ["cat", "dog", "car", "tree", "person", "building", "food", "other"]

metadata = {
    "feature_extractor_name": "image_classifier",
    "version": "0.4.1",
    "description": "ResNet-18 labels and embeddings for images",
    "category": "image",
}

input_schema = ImageInput
output_schema = ImageOutput
parameter_schema = ClassifierParams
supported_input_types = ["image"]

features = [
    {"feature_type": "embedding", "feature_name": "image_embedding", "embedding_dim": 512, "distance_metric": "cosine"},
]
