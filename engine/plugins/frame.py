"""The DataFrame plugins receive: the production columns, and small samples of each input type.

The dry run, `sluice plugin test` and the ingest job all build frames here, so a plugin sees the
same columns in every one of them.
"""

from __future__ import annotations

import struct
import uuid
import wave
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

PRODUCTION_COLUMNS = (
    "data", "document_id", "object_id", "blob_id", "blob_property", "blob_type",
    "collection_id", "feature_extractor_id", "mime_type", "size_bytes",
)
"""Every batch has these columns. Text is inline in `data`; files are `s3://` or `file://` URLs."""

INPUT_TYPES = ("text", "image", "video", "audio", "pdf")

_SAMPLE_TEXTS = (
    "Sluice runs feature-extraction plugins over every object that lands in a bucket.",
    "A short second sentence, so that batches hold more than one row.",
)


def add_input_aliases(batch: pd.DataFrame, input_fields: Iterable[str]) -> pd.DataFrame:
    """Give each text field of the plugin's `input_schema` a column holding `data`.

    The hosted product's own example reads `batch["text"]` while its frames only carry `data`, so
    that example fails in production there. Here a plugin whose input schema names `text` finds a
    `text` column on text rows (and None elsewhere); `data` stays the documented source.
    """
    fields = [f for f in input_fields if f not in batch.columns]
    if not fields:
        return batch
    is_text = batch["blob_type"].eq("text") if "blob_type" in batch.columns else pd.Series(True, index=batch.index)
    batch = batch.copy()
    for name in fields:
        batch[name] = pd.Series([d if t else None for d, t in zip(batch["data"], is_text, strict=False)], index=batch.index, dtype=object)
    return batch


def frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows with every production column (missing ones filled with defaults)."""
    defaults: dict[str, Any] = {
        "data": "", "document_id": "", "object_id": "", "blob_id": "", "blob_property": "content",
        "blob_type": "text", "collection_id": "", "feature_extractor_id": "", "mime_type": "text/plain", "size_bytes": 0,
    }
    return pd.DataFrame([{**defaults, **row} for row in rows], columns=list(PRODUCTION_COLUMNS))


def sample_frame(input_type: str, workdir: Path, *, feature_extractor_id: str = "dry-run", rows: int = 2) -> pd.DataFrame:
    """`rows` rows of one input type. Files are written under `workdir` and referenced by
    `file://` URL, the way the ingest job references objects of the local store."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"unknown input type {input_type!r}; expected one of {INPUT_TYPES}")
    workdir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        object_id = f"sample-{input_type}-{i}"
        record: dict[str, Any] = {
            "document_id": f"doc_{uuid.uuid5(uuid.NAMESPACE_URL, object_id).hex[:16]}", "object_id": object_id,
            "blob_id": f"{object_id}/content", "blob_type": input_type, "collection_id": "dry-run",
            "feature_extractor_id": feature_extractor_id,
        }
        if input_type == "text":
            text = _SAMPLE_TEXTS[i % len(_SAMPLE_TEXTS)]
            record.update(data=text, mime_type="text/plain", size_bytes=0)
        else:
            suffix, mime, payload = _SAMPLE_FILES[input_type](i)
            path = workdir / f"{object_id}{suffix}"
            path.write_bytes(payload)
            record.update(data=path.resolve().as_uri(), mime_type=mime, size_bytes=len(payload))
        records.append(record)
    return frame(records)


def _png(i: int, size: int = 32) -> tuple[str, str, bytes]:
    """A small RGB gradient PNG, written with zlib alone."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in ((x * 8 + i * 40) % 256, (y * 8) % 256, 128)) for y in range(size)
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return ".png", "image/png", data


def _wav(i: int, seconds: float = 1.0, rate: int = 16_000) -> tuple[str, str, bytes]:
    """One second of a sine tone, 16 kHz mono 16-bit."""
    import io
    import math

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        freq = 440 * (i + 1)
        out.writeframes(b"".join(
            struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * n / rate))) for n in range(int(seconds * rate))
        ))
    return ".wav", "audio/wav", buffer.getvalue()


def _pdf(i: int) -> tuple[str, str, bytes]:
    """A one-page PDF with one line of text (hand-written, valid cross-reference table)."""
    text = _SAMPLE_TEXTS[i % len(_SAMPLE_TEXTS)].replace("(", "").replace(")", "")
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return ".pdf", "application/pdf", bytes(out)


_SAMPLE_FILES: dict[str, Callable[[int], tuple[str, str, bytes]]] = {"image": _png, "audio": _wav, "pdf": _pdf}


def can_sample(input_type: str) -> bool:
    """Video is the one type Sluice cannot synthesise without an encoder; its dry run is skipped."""
    return input_type == "text" or input_type in _SAMPLE_FILES
