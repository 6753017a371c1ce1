from typing import List

from pydantic import BaseModel, Field


class AudioInput(BaseModel):
    url: str = Field(..., description="URL of a wav, flac, ogg or mp3 file")


class AudioOutput(BaseModel):
    audio_embedding: List[float] = Field(..., description="Mean and std of 64 log-mel bands")
    duration_s: float
    tempo_bpm: float


class AudioParams(BaseModel):
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    n_mels: int = Field(default=64, ge=16, le=128)
    max_seconds: float = Field(default=120.0, gt=0)


metadata = {
    "feature_extractor_name": "audio_features",
    "version": "0.9.0",
    "description": "Log-mel statistics, duration and tempo with librosa",
    "category": "audio",
}

input_schema = AudioInput
output_schema = AudioOutput
parameter_schema = AudioParams
supported_input_types = ["audio"]

features = [
    {"feature_type": "embedding", "feature_name": "audio_embedding", "embedding_dim": 128, "distance_metric": "euclidean"},
]
