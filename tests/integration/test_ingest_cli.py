"""`sluice ingest` against a running REST server (uvicorn on a free port, real local object store,
in-memory bus): folders walked with hidden files and links skipped, keys and content types,
one `ObjectCreated` per file, empty files, a 4xx for one file while the others go on, retries of
5xx and 429, an unreachable server, usage errors, and the progress output."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from fastapi.responses import JSONResponse

from events import decode
from functions.cli import client as cli_client
from functions.cli import ingest as ingest_cli
from functions.cli import main
from functions.cli.output import Progress
from tests.fixtures.rest_server import RestServer, clear_cli_env, free_port, point_cli_at

pytestmark = pytest.mark.integration
ADMIN = "sk_admin_ingest_cli_test-01234567"


class IngestServer(RestServer):
    """The REST app alone (no functions consume the events), with a switch to make chosen
    requests fail: `fail(method, path_part, status, times)`."""

    run_functions = False

    def __init__(self, data_dir: Path, admin_key: str) -> None:
        super().__init__(data_dir, admin_key)
        self.faults: list[list] = []
        self.requests: list[tuple[str, str]] = []

    async def middleware(self, request, call_next):
        path = request.url.path
        self.requests.append((request.method, path))
        for fault in self.faults:
            method, part, status, times = fault
            if times and request.method == method and part in path:
                fault[3] -= 1
                await request.body()
                return JSONResponse({"error": {"type": "injected", "message": f"injected {status}"}}, status_code=status)
        return await call_next(request)

    def fail(self, method: str, path_part: str, status: int, times: int = 1) -> None:
        self.faults.append([method, path_part, status, times])

    def head(self, bucket: str, key: str, namespace: str = "acme"):
        return self._run(self.platform.objects(namespace).head(bucket, key))

    def get(self, bucket: str, key: str, namespace: str = "acme") -> bytes:
        return self._run(self.platform.objects(namespace).get_bytes(bucket, key))

    def events(self) -> list:
        return [decode(m.value) for m in self.platform.bus.published(self.platform.topics.objects)]


@pytest.fixture
def stack(tmp_path, monkeypatch):
    clear_cli_env(monkeypatch)
    monkeypatch.setattr(cli_client, "BACKOFF_S", 0.01)
    with IngestServer(tmp_path / "data", ADMIN) as running:
        point_cli_at(monkeypatch, running.url, running.create_namespace("acme"))
        yield running


def sluice(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ingest_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code, out, err = sluice(capsys, "ingest", "--json", *argv)
    return code, json.loads(out), err


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


BIG = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk: streamed in pieces


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    write(root / "a.txt", "alpha\n")
    write(root / "nested" / "deeper" / "b.json", '{"b": 1}')
    write(root / "nested" / "blob", b"\x00\x01binary\xff")  # no extension, NUL: octet-stream
    write(root / "README", "plain words, ünïcode too\n")  # no extension, UTF-8: text/plain
    write(root / "nested" / "big.bin", BIG)
    write(root / "Grüße 日本 ✓.txt", "non-ASCII name")
    write(root / "empty.txt", b"")
    write(root / ".hidden.txt", "secret")
    write(root / ".git" / "config", "[core]")
    write(root / "nested" / ".cache" / "x.txt", "cached")
    (root / "link.txt").symlink_to(root / "a.txt")
    return root


EXPECTED = {
    "in/a.txt": ("text/plain", b"alpha\n"),
    "in/nested/deeper/b.json": ("application/json", b'{"b": 1}'),
    "in/nested/blob": ("application/octet-stream", b"\x00\x01binary\xff"),
    "in/README": ("text/plain", "plain words, ünïcode too\n".encode()),
    "in/nested/big.bin": ("application/octet-stream", BIG),
    "in/Grüße 日本 ✓.txt": ("text/plain", b"non-ASCII name"),
    "in/empty.txt": ("text/plain", b""),
}


def test_a_folder_is_uploaded_with_keys_bytes_content_types_and_one_event_per_file(stack, docs, capsys):
    code, report, err = ingest_json(capsys, str(docs), "--bucket", "docs", "--prefix", "in/")
    assert code == 0, err
    assert report["failed"] == []
    assert sorted(u["key"] for u in report["uploaded"]) == sorted(EXPECTED)  # hidden files, hidden folders, links skipped
    by_key = {u["key"]: u for u in report["uploaded"]}
    assert by_key["in/nested/deeper/b.json"]["path"] == str(docs / "nested" / "deeper" / "b.json")
    for key, (content_type, data) in EXPECTED.items():
        assert stack.get("docs", key) == data, key
        assert stack.head("docs", key).content_type == content_type, key
        assert by_key[key]["size"] == len(data) and by_key[key]["upload_id"].startswith("obj_")
    events = stack.events()
    assert sorted(e.payload.key for e in events) == sorted(EXPECTED)  # one each, the empty file's included
    assert all(e.namespace == "acme" and e.payload.bucket == "docs" and e.payload.source == "upload" for e in events)
    assert {e.payload.key: e.payload.size for e in events}["in/empty.txt"] == 0
    assert {e.payload.key: e.payload.content_type for e in events}["in/nested/deeper/b.json"] == "application/json"
    # the API key goes to the REST API only: presigned PUTs carry none (asserted by the store URL shape)
    assert all(path.startswith("/v1/objects/sluice-data/acme/docs/in/") for method, path in stack.requests if method == "PUT")


def test_the_text_summary_names_empty_and_skipped_files_and_progress_goes_to_stderr(stack, docs, tmp_path, capsys):
    single = write(tmp_path / "other" / "notes.md", "# notes\n")
    code, out, err = sluice(capsys, "ingest", str(docs), str(single), "--bucket", "docs", "-j", "2")
    assert code == 0, out + err
    assert out.startswith("uploaded 8 files (")
    assert "to bucket 'docs' of namespace 'acme'" in out
    assert "1 empty file (0 bytes), uploaded as empty objects: empty.txt" in out
    assert "skipped 3 hidden files or folders, 1 symbolic link" in out
    assert stack.get("docs", "notes.md") == b"# notes\n"  # a file given directly: its name is its key
    # stderr is not a terminal: a line per tenth, no redrawn bar
    lines = err.splitlines()
    assert lines and lines[-1].startswith("ingest: 100% (8/8 files") and "\r" not in err
    assert len(lines) <= 10

    code, out, err = sluice(capsys, "ingest", str(single), "--bucket", "docs", "--no-progress")
    assert code == 0 and err == "" and out.startswith("uploaded 1 file (8 B)")


def test_a_4xx_for_one_file_is_reported_and_the_others_are_uploaded(stack, tmp_path, capsys):
    root = tmp_path / "mixed"
    write(root / "good.txt", "fine")
    write(root / "back\\slash.txt", "the local store refuses backslashes in keys")
    long_dir = root.joinpath(*(["d" * 200] * 6))  # a key over the API's 1024 characters
    write(long_dir / "deep.txt", "too deep")
    write(root / "later.txt", "also fine")
    code, report, err = ingest_json(capsys, str(root), "--bucket", "docs")
    assert code == 1
    assert sorted(u["key"] for u in report["uploaded"]) == ["good.txt", "later.txt"]
    errors = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert set(errors) == {"back\\slash.txt", "deep.txt"}
    assert errors["back\\slash.txt"].startswith("request upload: 422 invalid_input: ") and "backslash" in errors["back\\slash.txt"]
    assert errors["deep.txt"].startswith("request upload: 422 invalid_input: key:")
    assert stack.get("docs", "later.txt") == b"also fine"
    assert sorted(e.payload.key for e in stack.events()) == ["good.txt", "later.txt"]

    code, out, err = sluice(capsys, "ingest", str(root / "back\\slash.txt"), str(root / "good.txt"), "--bucket", "docs")
    assert code == 1
    assert out.startswith("uploaded 1 of 2 files")
    assert "sluice: 1 file failed:" in err and "back\\slash.txt: request upload: 422" in err


def test_5xx_and_429_are_retried_and_each_object_is_announced_once(stack, tmp_path, capsys):
    root = tmp_path / "flaky"
    for name in ("one.txt", "two.txt", "three.txt"):
        write(root / name, name)
    stack.fail("PUT", "/one.txt", 503, times=2)
    stack.fail("POST", "/confirm", 429, times=1)
    stack.fail("POST", "/uploads", 502, times=1)
    code, report, err = ingest_json(capsys, str(root), "--bucket", "docs")
    assert code == 0, report
    assert sorted(u["key"] for u in report["uploaded"]) == ["one.txt", "three.txt", "two.txt"]
    assert stack.get("docs", "one.txt") == b"one.txt"
    assert sorted(e.payload.key for e in stack.events()) == ["one.txt", "three.txt", "two.txt"]
    assert sum(1 for m, p in stack.requests if m == "PUT" and p.endswith("/one.txt")) == 3

    stack.fail("PUT", "/two.txt", 500, times=cli_client.ATTEMPTS)  # never gets through
    code, report, _ = ingest_json(capsys, str(root), "--bucket", "docs", "--prefix", "again/")
    assert code == 1
    [failed] = report["failed"]
    assert failed["path"] == str(root / "two.txt")
    assert failed["error"] == f"PUT: 500 injected: injected 500 (gave up after {cli_client.ATTEMPTS} attempts)"
    assert stack.head("docs", "again/one.txt") is not None and stack.head("docs", "again/two.txt") is None


def test_an_unreachable_server_fails_every_file_after_retries(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_client, "BACKOFF_S", 0.01)
    point_cli_at(monkeypatch, f"http://127.0.0.1:{free_port()}", "sk_whatever")
    write(tmp_path / "x" / "a.txt", "a")
    write(tmp_path / "x" / "b.txt", "b")
    code, out, err = sluice(capsys, "ingest", str(tmp_path / "x"), "--bucket", "docs", "--no-progress")
    assert code == 1
    assert out.startswith("uploaded 0 of 2 files")
    assert err.count("request upload: ConnectError") == 2 and f"gave up after {cli_client.ATTEMPTS} attempts" in err


def test_usage_errors_exit_2_before_anything_is_uploaded(tmp_path, monkeypatch, capsys):
    clear_cli_env(monkeypatch)
    monkeypatch.setenv("SLUICE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: any request would fail with 1
    monkeypatch.setenv("SLUICE_API_KEY", "sk_whatever")
    a = write(tmp_path / "a" / "same.txt", "a")
    b = write(tmp_path / "b" / "same.txt", "b")

    code, _, err = sluice(capsys, "ingest", str(a), "--bucket", "docs")
    assert code == 2 and "no namespace" in err
    monkeypatch.setenv("SLUICE_NAMESPACE", "acme")
    code, _, err = sluice(capsys, "ingest", str(tmp_path / "missing"), str(a), "--bucket", "docs")
    assert code == 2 and "missing: no such file or folder" in err
    for bucket in ("Docs", "d", "docs_", "-docs", "do..cs"):
        code, _, err = sluice(capsys, "ingest", str(a), f"--bucket={bucket}")
        assert code == 2 and f"invalid bucket name {bucket!r}" in err, bucket
    for prefix in ("/abs/", "a//b/", "../up/", "./"):
        code, _, err = sluice(capsys, "ingest", str(a), "--bucket", "docs", f"--prefix={prefix}")
        assert code == 2 and "invalid --prefix" in err, prefix
    code, _, err = sluice(capsys, "ingest", str(a), str(b), "--bucket", "docs")
    assert code == 2 and "would both be uploaded as 'same.txt'" in err
    code, _, err = sluice(capsys, "ingest", str(a), "--bucket", "docs", "--concurrency", "0")
    said = " ".join(err.replace("│", " ").split())  # the usage error is drawn in a panel, wrapped
    assert code == 2 and "must be a whole number from 1 to 64, not '0'" in said, err

    empty = tmp_path / "only-hidden"
    write(empty / ".DS_Store", "x")
    code, out, _ = sluice(capsys, "ingest", str(empty), "--bucket", "docs")
    assert code == 0 and out == "nothing to upload (skipped 1 hidden file or folder)\n"


def test_content_types_from_the_name_else_sniffed(tmp_path):
    assert ingest_cli.content_type(write(tmp_path / "x.png", b"\x89PNG")) == "image/png"
    assert ingest_cli.content_type(write(tmp_path / "x.tar.gz", b"\x1f\x8b")) == "application/gzip"
    assert ingest_cli.content_type(write(tmp_path / "plain", "é" * 5000)) == "text/plain"  # a character cut at 8 KiB
    assert ingest_cli.content_type(write(tmp_path / "latin1", "café".encode("latin-1"))) == "application/octet-stream"
    assert ingest_cli.content_type(write(tmp_path / "nul", b"abc\x00def")) == "application/octet-stream"
    assert ingest_cli.content_type(write(tmp_path / "late-nul", b"a" * 9000 + b"\x00")) == "text/plain"  # only 8 KiB are read


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_on_a_terminal_and_ends_with_the_totals():
    stream = _Terminal()
    progress = Progress(2048, files=2, label="ingest", stream=stream)
    progress.add_bytes(1024)
    progress.file_done(True)
    progress.add_bytes(1024)
    progress.file_done(False)
    progress.close()
    text = stream.getvalue()
    assert "\x1b[" in text  # drawn with terminal control codes
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert shown.endswith("\n")  # and left on its own line
    final = shown.rstrip("\n").rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
    assert "ingest" in final and "100%" in final and "2/2 files  2.0 KiB / 2.0 KiB" in final and "1 failed" in final

    quiet = _Terminal()
    progress = Progress(10, files=1, stream=quiet, enabled=False)
    progress.add_bytes(10)
    progress.file_done(True)
    progress.close()
    assert quiet.getvalue() == ""
