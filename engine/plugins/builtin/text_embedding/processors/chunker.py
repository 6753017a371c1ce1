"""Split each text into chunks of at most `chunk_size` characters, `chunk_overlap` apart.

A chunk ends at the last paragraph break that leaves it at least half full, else at the last
sentence end that does, else at the last whitespace, and only where there is none of those, in the
middle of a word at exactly `chunk_size`. The next chunk starts `chunk_overlap` characters
before the end of the one before, moved forward to the start of a word. Chunks carry no leading or
trailing whitespace, and `text[chunk_start:chunk_end]` is always the chunk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s)")
"""A sentence end: terminal punctuation, closing quotes or brackets, then whitespace."""

CHUNK_COLUMNS = ("chunk_index", "chunk_count", "chunk_start", "chunk_end", "parent_document_id")


@dataclass(frozen=True)
class ChunkerConfig:
    chunk_size: int = 1000
    chunk_overlap: int = 100
    text_column: str = "data"

    def __post_init__(self) -> None:
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")
        if isinstance(self.chunk_overlap, bool) or not isinstance(self.chunk_overlap, int) or self.chunk_overlap < 0:
            raise ValueError(f"chunk_overlap must be a non-negative integer, got {self.chunk_overlap!r}")
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})")


def _last_break(text: str, lowest: int, limit: int) -> int | None:
    """The chunk end in (lowest, limit] that the most preferred boundary gives, or None."""
    end = min(len(text), limit + 1)  # the lookahead may see the character just past the window
    for pattern, use_end in ((_PARAGRAPH, False), (_SENTENCE, True)):
        best = None
        for match in pattern.finditer(text, lowest, end):
            cut = match.end() if use_end else match.start()
            if lowest < cut <= limit:
                best = cut
        if best is not None:
            return best
    return None


def _last_space(text: str, lowest: int, limit: int) -> int | None:
    for cut in range(limit, lowest, -1):
        if cut < len(text) and text[cut].isspace():
            return cut
    return None


def split_text(text: str, chunk_size: int = 1000, chunk_overlap: int = 100) -> list[tuple[int, int]]:
    """(start, end) offsets of the chunks of `text`; [] for empty or whitespace-only text."""
    config = ChunkerConfig(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    size, overlap = config.chunk_size, config.chunk_overlap
    n = len(text)
    spans: list[tuple[int, int]] = []
    pos = _skip_space(text, 0, n)
    fresh = pos  # the first character no chunk holds yet: every chunk must take it
    while pos < n:
        limit = pos + size
        if limit >= n or _skip_space(text, limit, n) >= n:  # the rest fits, or is only whitespace
            cut = n
        else:
            # Each cut lies past the overlap and takes at least one new character, so every chunk
            # starts and ends after the one before.
            lowest = max(pos + overlap, fresh)
            brk = _last_break(text, max(lowest, pos + size // 2), limit)
            if brk is None:
                cut = _last_space(text, lowest, limit) or limit
            else:
                cut = brk
        end = cut
        while end > pos and text[end - 1].isspace():
            end -= 1
        spans.append((pos, end))
        if cut >= n:
            break
        fresh = _skip_space(text, cut, n)
        pos = _next_start(text, cut, overlap, fresh, size)
    return spans


def _skip_space(text: str, pos: int, n: int) -> int:
    while pos < n and text[pos].isspace():
        pos += 1
    return pos


def _next_start(text: str, cut: int, overlap: int, fresh: int, size: int) -> int:
    """`overlap` characters before `cut`, moved forward to the start of a word (unless the whole
    overlap is one word cut hard); `fresh`, without overlap, when a long run of whitespace leaves
    no room for new text in the window."""
    start = cut - overlap
    if overlap and start > 0 and not text[start - 1].isspace():
        word = start
        while word < cut and not text[word].isspace():
            word += 1
        if word < cut:  # else the overlap lies inside one long word, cut hard: keep it as it is
            start = word
    start = _skip_space(text, start, len(text))
    return fresh if fresh - start >= size else min(start, fresh)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


class TextChunker:
    """One output row per chunk, with every input column; `data` is the chunk's text and
    `document_id` is '<original document_id>:<chunk_index>'. Empty texts give no rows."""

    def __init__(self, config: ChunkerConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = ChunkerConfig()
        elif isinstance(config, Mapping):
            config = ChunkerConfig(**config)
        self.config = config

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        column = self.config.text_column
        if column not in batch.columns:
            raise KeyError(f"the batch has no {column!r} column (columns: {', '.join(map(str, batch.columns))})")
        columns = [c for c in batch.columns if c not in CHUNK_COLUMNS] + list(CHUNK_COLUMNS)
        if "document_id" not in columns:
            columns.append("document_id")
        rows: list[dict[str, Any]] = []
        for record in batch.to_dict("records"):
            text = _as_text(record.get(column))
            spans = split_text(text, self.config.chunk_size, self.config.chunk_overlap)
            parent = _as_text(record.get("document_id"))
            for index, (start, end) in enumerate(spans):
                rows.append({
                    **record,
                    column: text[start:end],
                    "document_id": f"{parent}:{index}",
                    "parent_document_id": parent,
                    "chunk_index": index,
                    "chunk_count": len(spans),
                    "chunk_start": start,
                    "chunk_end": end,
                })
        return pd.DataFrame(rows, columns=columns)
