"""`sluice plugin init` and `sluice plugin test` as an author runs them: the template passes the
server's checks unedited; broken plugins fail with `file:line [RULE] message` and a hint; the zip
`push` builds is deterministic."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from functions.cli import main
from functions.cli.plugin import build_zip, manifest_identity

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SLUICE = ROOT / ".venv" / "bin" / "sluice"


def sluice(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def init(capsys, parent: Path, name: str = "my_plugin") -> Path:
    code, out, err = sluice(capsys, "plugin", "init", name, "--dir", str(parent))
    assert code == 0, err
    return parent / name


WRONG_KEYS = '''features = [
    {
        "type": "embedding",
        "name": "my_plugin_embedding",
        "dimensions": 384,
        "distance": "cosine",
    },
]
'''


def with_wrong_feature_keys(manifest: Path) -> None:
    text = manifest.read_text()
    start = text.index("features = [")
    manifest.write_text(text[:start] + WRONG_KEYS)


@pytest.mark.torch
def test_a_fresh_template_passes_plugin_test_and_its_dry_run_writes_384_dimensional_vectors(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    code, out, err = sluice(capsys, "plugin", "test", str(folder))
    assert code == 0, out + err
    assert "scan: passed" in out and "validation: passed" in out
    assert "sluice://my_plugin@1.0.0/my_plugin_embedding" in out
    assert "my_plugin_embedding: 384-d" in out
    assert "dry run: text: 2 rows in, 2 rows out" in out
    assert "PASSED: my_plugin 1.0.0" in out


@pytest.mark.torch
def test_the_installed_sluice_command_inits_a_plugin_and_tests_its_zip_as_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    command = [str(SLUICE)] if SLUICE.exists() else [sys.executable, "-m", "functions.cli"]
    made = subprocess.run([*command, "plugin", "init", "smoke_test", "--dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    archive = tmp_path / "smoke_test.zip"
    archive.write_bytes(build_zip(tmp_path / "smoke_test"))
    run = subprocess.run([*command, "plugin", "test", str(archive), "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["passed"] and result["scan"]["passed"]
    assert (result["name"], result["version"]) == ("smoke_test", "1.0.0")
    assert result["validation"]["feature_uris"] == ["sluice://smoke_test@1.0.0/smoke_test_embedding"]
    [dry_run] = result["validation"]["dry_runs"]
    assert dry_run["input_type"] == "text" and dry_run["rows_out"] == 2 and "smoke_test_embedding" in dry_run["columns"]
    assert result["validation"]["has_realtime"] is True


def test_plugin_test_names_each_wrong_feature_key_and_its_right_name(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    with_wrong_feature_keys(folder / "manifest.py")
    code, out, err = sluice(capsys, "plugin", "test", str(folder))
    assert code == 1, out + err
    for wrong, right in [("type", "feature_type"), ("name", "feature_name"), ("dimensions", "embedding_dim"),
                         ("distance", "distance_metric")]:
        assert re.search(rf"manifest\.py:\d+ \[SLU811\] .*'{wrong}'; use '{right}'", out), out
    assert "hint: Use exactly the keys feature_type, feature_name, embedding_dim, distance_metric." in out
    assert "FAILED: my_plugin 1.0.0" in out


def test_plugin_test_refuses_a_plugin_that_imports_subprocess_naming_file_line_and_rule(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    pipeline = folder / "pipeline.py"
    lines = pipeline.read_text().splitlines(keepends=True)
    lines.insert(4, "import subprocess\n")
    pipeline.write_text("".join(lines))
    code, out, err = sluice(capsys, "plugin", "test", str(folder))
    assert code == 1, out + err
    assert re.search(r"^pipeline\.py:5 \[SLU\d+\] .*subprocess", out, re.MULTILINE), out
    assert re.search(r"^    hint: \S", out, re.MULTILINE), out
    assert "scan: failed" in out and "validation:" not in out  # nothing is imported after a failed scan


def test_plugin_test_refuses_a_zip_with_a_parent_directory_entry_naming_it(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.writestr(f"my_plugin/{path.relative_to(folder).as_posix()}", path.read_bytes())
        zf.writestr("../evil.py", "print('escaped')\n")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buffer.getvalue())
    code, out, err = sluice(capsys, "plugin", "test", str(archive))
    assert code == 1, out + err
    assert re.search(r"^\.\./evil\.py:0 \[SLU910\] .*'\.\./evil\.py'", out, re.MULTILINE), out
    assert "archive: refused" in out
    assert not (tmp_path.parent / "evil.py").exists()


def test_plugin_test_json_reports_the_scan_findings(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    (folder / "pipeline.py").write_text((folder / "pipeline.py").read_text() + "\nimport subprocess\n")
    code, out, _ = sluice(capsys, "plugin", "test", str(folder), "--json")
    assert code == 1
    result = json.loads(out)
    assert result["passed"] is False and result["scan"]["passed"] is False and result["validation"] is None
    assert any(f["file"] == "pipeline.py" for f in result["scan"]["findings"])


def test_plugin_init_refuses_an_invalid_name(tmp_path, capsys):
    for bad in ("ab", "1plugin", "my-plugin", "my plugin", "x" * 65):
        code, _, err = sluice(capsys, "plugin", "init", bad, "--dir", str(tmp_path))
        assert code == 2 and "invalid plugin name" in err
    assert list(tmp_path.iterdir()) == []


def test_plugin_init_refuses_an_existing_non_empty_folder_and_leaves_it_alone(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, _, err = sluice(capsys, "plugin", "init", "taken", "--dir", str(tmp_path))
    assert code == 2 and "already exists" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert sluice(capsys, "plugin", "init", "empty", "--dir", str(tmp_path))[0] == 0


def test_plugin_init_fills_the_name_into_every_template_file(tmp_path, capsys):
    folder = init(capsys, tmp_path, "review_bot")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", "manifest.py", "pipeline.py", "processors/__init__.py", "processors/embedder.py", "realtime.py"]
    assert not any("{{name}}" in (folder / f).read_text() for f in files)
    assert '"feature_extractor_name": "review_bot"' in (folder / "manifest.py").read_text()
    assert manifest_identity(folder) == ("review_bot", "1.0.0")
    readme = (folder / "README.md").read_text()
    for column in ("data", "document_id", "object_id", "blob_id", "blob_property", "blob_type", "collection_id",
                   "feature_extractor_id", "mime_type", "size_bytes"):
        assert f"`{column}`" in readme


def test_the_manifest_identity_is_read_without_executing_the_manifest(tmp_path):
    (tmp_path / "manifest.py").write_text(
        "raise SystemExit('executed')\nfeature_extractor_name = 'module_level'\nversion: str = '2.1.0'\n"
    )
    assert manifest_identity(tmp_path) == ("module_level", "2.1.0")
    (tmp_path / "manifest.py").write_text("metadata = {'name': 'by_name', 'version': '0.3.0'}\n")
    assert manifest_identity(tmp_path) == ("by_name", "0.3.0")
    (tmp_path / "manifest.py").write_text("def broken(:\n")
    assert manifest_identity(tmp_path) == (None, None)


def test_the_zip_push_builds_is_the_same_bytes_twice_and_skips_caches_and_hidden_files(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    first = build_zip(folder)
    for junk in ("__pycache__/manifest.cpython-311.pyc", "processors/__pycache__/x.pyc", "stale.pyc", ".DS_Store",
                 ".git/config", ".venv/lib/x.py", ".env"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("junk")
    os.utime(folder / "manifest.py", (1, 1))  # timestamps do not reach the archive
    second = build_zip(folder)
    assert first == second
    names = zipfile.ZipFile(io.BytesIO(second)).namelist()
    assert names == sorted(names)
    assert names == [f"my_plugin/{n}" for n in ("README.md", "manifest.py", "pipeline.py", "processors/__init__.py",
                                                "processors/embedder.py", "realtime.py")]


def test_the_zip_push_builds_refuses_a_symbolic_link(tmp_path, capsys):
    folder = init(capsys, tmp_path)
    (tmp_path / "secret.txt").write_text("do not upload")
    (folder / "data.txt").symlink_to(tmp_path / "secret.txt")
    code, _, err = sluice(capsys, "plugin", "test", str(folder))
    assert code == 1 and "data.txt is a symbolic link" in err


def test_rest_commands_need_a_namespace(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLUICE_NAMESPACE", raising=False)
    code, _, err = sluice(capsys, "plugin", "list")
    assert code == 2 and "no namespace" in err and "SLUICE_NAMESPACE" in err
