"""Reading ingest inputs where they are used. TRUSTED side (the first stage's actor, never a host).

The scheduler holds no object's bytes: each row it makes carries the object's URL in `data` and,
for an object that may be passed inline (a text object, or a small file that may be text), its
physical location in `INLINE_COLUMN`. The first stage reads those objects batch by batch, just
before the plugin host gets the batch (`read_inline`), so a task of any size holds at most a few
batches' bytes at once, on the workers that run them, streamed through the job.

A text object becomes `data` (UTF-8, a BOM dropped); a small file that reads as text becomes a
text row too, else it keeps its URL. An object that is gone, larger than the inline limit (it
changed after it was announced) or not UTF-8 text becomes a failure row of step `read` naming it.
Reads go to the data bucket's folder of the spec's namespace only.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

import pandas as pd

INLINE_COLUMN = "_sluice_inline"
"""JSON {"bucket", "key", "name", "text": whether it must be text, "max_bytes"}: read this object into `data`."""
TEXT_MIME_FALLBACK = "text/plain"


def looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (no NUL; a character cut at the end allowed)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3
    return True


class InlineReader:
    """Reads the inline objects of a batch for one namespace, through the spec's store access."""

    def __init__(self, namespace: str, access: dict[str, Any]) -> None:
        self.namespace = namespace
        self.access = access
        self._s3: Any = None

    def read(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """At most `max_bytes` + 1 bytes of the object (one more tells it is over the limit)."""
        if bucket != self.access.get("data_bucket") or not key.startswith(f"{self.namespace}/") or ".." in key.split("/"):
            raise PermissionError(f"object {bucket}/{key} is not in namespace {self.namespace!r}'s folder")
        if self.access.get("kind") == "local":
            root = Path(self.access["root"]).resolve()
            path = (root / bucket).joinpath(*key.split("/"))
            if not path.resolve().is_relative_to(root / bucket):
                raise PermissionError(f"object {bucket}/{key} resolves outside the store")
            with open(path, "rb") as file:
                return file.read(max_bytes + 1)
        from botocore.exceptions import ClientError

        from engine.sandbox.services import s3_client

        if self._s3 is None:
            self._s3 = s3_client(self.access)
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "NoSuchBucket", "404"):
                raise FileNotFoundError(f"{bucket}/{key}") from exc
            if exc.response.get("Error", {}).get("Code", "") == "InvalidRange":  # an empty object
                return b""
            raise
        body = response["Body"]
        try:
            return body.read(max_bytes + 1)
        finally:
            body.close()

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None


def read_inline(frame: pd.DataFrame, reader: InlineReader) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """`frame` with its inline objects read into `data` (and `INLINE_COLUMN` dropped); and
    (object_id, error) of each object that could not be read, whose rows are dropped."""
    if INLINE_COLUMN not in frame.columns:
        return frame, []
    frame = frame.copy()
    failures: list[tuple[str, str]] = []
    keep = [True] * len(frame)
    data, kinds, mimes = frame["data"].tolist(), frame["blob_type"].tolist(), frame["mime_type"].tolist()
    from engine.plugins.extractors.pipeline import TEXT_MIME_TYPES

    for i, cell in enumerate(frame[INLINE_COLUMN].tolist()):
        if not isinstance(cell, str) or not cell:
            continue
        where = json.loads(cell)
        object_id = str(frame["object_id"].iat[i])
        bucket, key, limit = str(where["bucket"]), str(where["key"]), int(where["max_bytes"])
        shown = key.split("/", 2)[-1]
        try:
            raw = reader.read(bucket, key, limit)
        except FileNotFoundError:
            failures.append((object_id, f"object {where.get('name') or shown} no longer exists"))
            keep[i] = False
            continue
        if len(raw) > limit:
            failures.append((object_id, f"object {where.get('name') or shown} is now larger than the inline limit ({limit}, "
                                        "SLUICE_INGEST_MAX_INLINE_BYTES): it changed after it was announced"))
            keep[i] = False
            continue
        if where.get("text") or looks_like_text(raw[:8192]):
            try:
                data[i] = codecs.decode(raw, "utf-8-sig")
            except UnicodeDecodeError as exc:
                if where.get("text"):
                    failures.append((object_id, f"{where.get('name') or shown!r} is not UTF-8 text: {exc}"))
                    keep[i] = False
                continue
            kinds[i] = "text"
            if not (str(mimes[i]).startswith("text/") or mimes[i] in TEXT_MIME_TYPES):
                mimes[i] = TEXT_MIME_FALLBACK
    frame["data"], frame["blob_type"], frame["mime_type"] = data, kinds, mimes
    frame = frame.drop(columns=[INLINE_COLUMN])[keep].reset_index(drop=True)
    return frame, failures


__all__ = ["INLINE_COLUMN", "InlineReader", "looks_like_text", "read_inline"]
