from typing import List

from pydantic import BaseModel, Field


class OnnxInput(BaseModel):
    text: str


class OnnxOutput(BaseModel):
    onnx_embedding: List[float]


class OnnxParams(BaseModel):
    model_url: str = Field(default="s3://models/minilm-onnx/model.onnx", description="Exported ONNX graph")
    tokenizer_name: str = Field(default="sentence-transformers/all-MiniLM-L6-v2")
    max_length: int = Field(default=256, ge=8, le=512)
    threads: int = Field(default=0, ge=0, description="0 lets onnxruntime decide")


metadata = {
    "feature_extractor_name": "onnx_embedder",
    "version": "2.0.0",
    "description": "MiniLM exported to ONNX, mean-pooled",
    "category": "text",
}

input_schema = OnnxInput
output_schema = OnnxOutput
parameter_schema = OnnxParams
supported_input_types = ["text"]

features = [
    {"feature_type": "embedding", "feature_name": "onnx_embedding", "embedding_dim": 384, "distance_metric": "cosine"},
]
