"""Ingest inputs are read where they are used (`engine.ingest.inputs`): the first stage reads each
inline object of its batch from the namespace's folder, and what cannot be read is a failure of
step `read` naming the object."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from engine.ingest.inputs import INLINE_COLUMN, InlineReader, read_inline

pytestmark = pytest.mark.unit

BUCKET = "sluice-data"


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "objects"
    (root / BUCKET / "acme" / "docs").mkdir(parents=True)
    (root / BUCKET / "globex" / "docs").mkdir(parents=True)
    return root


def _row(object_id: str, key: str, *, text: bool, limit: int = 1000, mime: str = "text/plain") -> dict:
    inline = json.dumps({"bucket": BUCKET, "key": f"acme/docs/{key}", "name": f"docs/{key}", "text": text, "max_bytes": limit})
    return {"object_id": object_id, "data": f"file:///objects/{BUCKET}/acme/docs/{key}", "blob_type": "text" if text else "file",
            "mime_type": mime, INLINE_COLUMN: inline}


def _reader(store) -> InlineReader:
    return InlineReader("acme", {"kind": "local", "root": str(store), "data_bucket": BUCKET})


def test_text_and_small_files_that_read_as_text_go_inline_and_binary_files_keep_their_url(store):
    folder = store / BUCKET / "acme" / "docs"
    (folder / "a.txt").write_bytes("\ufeffhéllo rivers".encode())
    (folder / "b.dat").write_bytes(b"plain words in a .dat file")
    (folder / "c.bin").write_bytes(b"\x00\x01PK binary")
    frame = pd.DataFrame([_row("o1", "a.txt", text=True), _row("o2", "b.dat", text=False, mime="application/octet-stream"),
                          _row("o3", "c.bin", text=False, mime="application/octet-stream"),
                          {"object_id": "o4", "data": "file:///x.png", "blob_type": "image", "mime_type": "image/png",
                           INLINE_COLUMN: None}])
    out, failures = read_inline(frame, _reader(store))
    assert failures == [] and INLINE_COLUMN not in out.columns
    assert out["data"].tolist()[:2] == ["héllo rivers", "plain words in a .dat file"]
    assert out["blob_type"].tolist() == ["text", "text", "file", "image"]
    assert out["mime_type"].tolist() == ["text/plain", "text/plain", "application/octet-stream", "image/png"]
    assert out["data"].iat[2].startswith("file://")


def test_an_object_gone_too_large_or_not_utf8_is_a_read_failure_naming_it_and_the_others_are_kept(store):
    folder = store / BUCKET / "acme" / "docs"
    (folder / "big.txt").write_bytes(b"x" * 101)
    (folder / "latin1.txt").write_bytes("café".encode("latin-1"))
    (folder / "fine.txt").write_bytes(b"fine")
    frame = pd.DataFrame([_row("o1", "gone.txt", text=True), _row("o2", "big.txt", text=True, limit=100),
                          _row("o3", "latin1.txt", text=True), _row("o4", "fine.txt", text=True)])
    out, failures = read_inline(frame, _reader(store))
    assert out["object_id"].tolist() == ["o4"] and out["data"].tolist() == ["fine"]
    reasons = dict(failures)
    assert "docs/gone.txt no longer exists" in reasons["o1"]
    assert "larger than the inline limit (100" in reasons["o2"] and "SLUICE_INGEST_MAX_INLINE_BYTES" in reasons["o2"]
    assert "not UTF-8 text" in reasons["o3"]


def test_a_location_outside_the_namespaces_folder_is_never_read(store):
    (store / BUCKET / "globex" / "docs" / "secret.txt").write_bytes(b"globex's")
    reader = _reader(store)
    for key in ("globex/docs/secret.txt", "acme/../globex/docs/secret.txt"):
        with pytest.raises(PermissionError):
            reader.read(BUCKET, key, 100)
    with pytest.raises(PermissionError):
        reader.read("another-bucket", "acme/docs/a.txt", 100)
