import re
from dataclasses import dataclass
from typing import Iterator, List

import pandas as pd

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class ChunkerConfig:
    chunk_size: int = 800
    overlap: int = 100


def chunks(text: str, size: int, overlap: int) -> Iterator[str]:
    """Greedy sentence packing; a sentence longer than `size` is cut hard."""
    current = ""
    for sentence in SENTENCE_END.split(text.strip()):
        while len(sentence) > size:
            yield sentence[:size]
            sentence = sentence[size - overlap:]
        if current and len(current) + 1 + len(sentence) > size:
            yield current
            current = current[-overlap:] if overlap else ""
        current = f"{current} {sentence}".strip()
    if current:
        yield current


class Chunker:
    """One row in, one row per chunk out; the other columns are copied."""

    def __init__(self, config: ChunkerConfig, **kwargs):
        self.config = config

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out: List[dict] = []
        for row in batch.to_dict(orient="records"):
            pieces = list(chunks(str(row.get("data") or ""), self.config.chunk_size, self.config.overlap)) or [""]
            for i, piece in enumerate(pieces):
                out.append({**row, "chunk_text": piece, "chunk_index": i})
        return pd.DataFrame(out, columns=[*batch.columns, "chunk_text", "chunk_index"])
