"""The steps of text_embedding: chunk, then embed."""

from .chunker import ChunkerConfig, TextChunker, split_text
from .onnx_embedder import EmbedderConfig, OnnxEmbedder

__all__ = ["ChunkerConfig", "EmbedderConfig", "OnnxEmbedder", "TextChunker", "split_text"]
