"""Fast sentence encoders for the builtin plugins and the realtime endpoints.

`MiniLMEncoder` computes sentence-transformers' all-MiniLM-L6-v2 embeddings with ONNX Runtime on
CPU (fp32 with ORT transformer fusions, or selectively quantised int8 when a calibration check
shows it is as good), and with ONNX Runtime CUDA or torch on a GPU. Importing this package is cheap: onnxruntime, torch and
transformers are imported when an encoder is built.
"""

from engine.encoders.minilm import (
    CALIBRATION_SENTENCES,
    EMBEDDING_DIM,
    FUSED_RECIPE,
    INT8_RECIPE,
    MODEL_ID,
    QUALITY_THRESHOLD,
    EncoderError,
    MiniLMEncoder,
    default_cache_dir,
    shared_encoder,
)

__all__ = [
    "CALIBRATION_SENTENCES",
    "EMBEDDING_DIM",
    "FUSED_RECIPE",
    "INT8_RECIPE",
    "MODEL_ID",
    "QUALITY_THRESHOLD",
    "EncoderError",
    "MiniLMEncoder",
    "default_cache_dir",
    "shared_encoder",
]
