from typing import List, Optional

from pydantic import BaseModel, Field, HttpUrl


class ApiInput(BaseModel):
    text: str


class ApiOutput(BaseModel):
    api_embedding: List[float]
    model: Optional[str] = None


class ApiParams(BaseModel):
    endpoint: HttpUrl = Field(default="https://api.example.com/v1/embeddings")
    model: str = Field(default="text-embedding-small")
    secret_name: str = Field(default="EMBEDDING_API_KEY", description="Namespace secret holding the API key")
    timeout_s: float = Field(default=30.0, gt=0, le=120)
    retries: int = Field(default=3, ge=0, le=10)


metadata = {
    "feature_extractor_name": "api_caller",
    "version": "0.5.0",
    "description": "Embeddings from a hosted HTTP API; the key comes from container.secrets",
    "category": "text",
}

input_schema = ApiInput
output_schema = ApiOutput
parameter_schema = ApiParams
supported_input_types = ["text"]

features = [
    {"feature_type": "embedding", "feature_name": "api_embedding", "embedding_dim": 1536, "distance_metric": "cosine"},
]
