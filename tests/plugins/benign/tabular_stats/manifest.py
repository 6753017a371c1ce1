from typing import List

from pydantic import BaseModel, Field


class TableInput(BaseModel):
    url: str = Field(..., description="URL of a CSV or parquet file")


class TableOutput(BaseModel):
    table_profile: List[float]
    n_rows: int
    n_columns: int
    numeric_columns: List[str]


class TableParams(BaseModel):
    max_rows: int = Field(default=200_000, ge=1)
    quantiles: List[float] = Field(default=[0.05, 0.25, 0.5, 0.75, 0.95])


metadata = {
    "feature_extractor_name": "tabular_stats",
    "version": "0.7.0",
    "description": "A fixed-size statistical profile of a CSV or parquet table",
    "category": "tabular",
}

input_schema = TableInput
output_schema = TableOutput
parameter_schema = TableParams
supported_input_types = ["text", "document"]

features = [
    {"feature_type": "embedding", "feature_name": "table_profile", "embedding_dim": 32, "distance_metric": "euclidean"},
]
