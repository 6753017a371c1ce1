"""`sluice plugin` against a running REST server (uvicorn on a free port, with the scan and
register functions running): push → list → log → push v2 → diff → rollback → status → pull →
delete, a refused push, and a push that outlives its --wait."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from functions.cli import main
from tests.fixtures.plugins import HASH_EMBEDDER
from tests.fixtures.rest_server import RestServer, clear_cli_env, point_cli_at

pytestmark = pytest.mark.integration
ADMIN = "sk_admin_plugin_cli_test-01234567"


@pytest.fixture
def stack(tmp_path, monkeypatch):
    clear_cli_env(monkeypatch)
    with RestServer(tmp_path / "data", ADMIN) as running:
        running.key = running.create_namespace("acme")
        point_cli_at(monkeypatch, running.url, running.key)
        yield running


def sluice(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def hash_plugin(dest: Path) -> Path:
    return Path(shutil.copytree(HASH_EMBEDDER, dest, ignore=shutil.ignore_patterns("__pycache__")))


def test_push_list_log_push_again_diff_rollback_status_pull_and_delete_through_the_cli(stack, tmp_path, capsys):
    folder = hash_plugin(tmp_path / "hash_embedder")

    code, out, err = sluice(capsys, "plugin", "push", str(folder), "-m", "first version")
    assert code == 0, out + err
    assert "registered hash_embedder 1.0.0" in out
    assert "sluice://hash_embedder@1.0.0/hash_embedding" in out and "deployment: NOT_DEPLOYED" in out
    assert "uploaded" in err  # stderr is not a terminal: one line, no redrawn bar
    assert stack.store_requests and all("authorization" not in h for h in stack.store_requests)

    code, out, _ = sluice(capsys, "plugin", "list")
    assert code == 0
    assert len(out.splitlines()) == 1, out
    [row] = out.splitlines()
    assert row.split()[:3] == ["hash_embedder", "1.0.0", "*"] and "sluice://hash_embedder@1.0.0/hash_embedding" in row

    again = sluice(capsys, "plugin", "push", str(folder))
    assert again[0] == 1 and "already registered" in again[2] and "--version" in again[2]

    manifest = folder / "manifest.py"
    manifest.write_text(manifest.read_text().replace('"version": "1.0.0"', '"version": "1.1.0"'))
    code, out, err = sluice(capsys, "plugin", "push", str(folder), "-m", "bump to 1.1.0")
    assert code == 0, out + err
    assert "registered hash_embedder 1.1.0" in out

    code, out, _ = sluice(capsys, "plugin", "log", "hash_embedder")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["1.1.0", "1.0.0"]
    assert lines[0].split()[2:] == ["*", "bump", "to", "1.1.0"] and lines[1].split()[2:] == ["first", "version"]

    code, out, _ = sluice(capsys, "plugin", "diff", "hash_embedder", "1.0.0", "1.1.0")
    assert code == 0
    assert "--- 1.0.0/manifest.py" in out and "+++ 1.1.0/manifest.py" in out
    assert '-metadata = {"feature_extractor_name": "hash_embedder", "version": "1.0.0"' in out
    assert '+metadata = {"feature_extractor_name": "hash_embedder", "version": "1.1.0"' in out
    assert "\033[" not in out  # no colour when stdout is not a terminal

    code, out, _ = sluice(capsys, "plugin", "rollback", "hash_embedder", "1.0.0")
    assert code == 0 and "active version 1.0.0 (was 1.1.0)" in out

    code, out, _ = sluice(capsys, "plugin", "status", "hash_embedder")
    assert code == 0
    assert "active version 1.0.0" in out and "scan:        passed (0 warnings)" in out
    assert "sluice://hash_embedder@1.0.0/hash_embedding" in out and "deployment:  NOT_DEPLOYED" in out

    pulled = tmp_path / "pulled"
    code, out, _ = sluice(capsys, "plugin", "pull", "hash_embedder", str(pulled))
    assert code == 0 and "pulled hash_embedder 1.0.0" in out
    assert '"version": "1.0.0"' in (pulled / "manifest.py").read_text()
    assert (pulled / "processors" / "hashing.py").read_bytes() == (folder / "processors" / "hashing.py").read_bytes()
    code, _, err = sluice(capsys, "plugin", "pull", "hash_embedder", str(pulled))
    assert code == 2 and "not empty" in err
    code, out, _ = sluice(capsys, "plugin", "pull", "hash_embedder", str(tmp_path / "v11"), "--version", "1.1.0")
    assert code == 0 and '"version": "1.1.0"' in (tmp_path / "v11" / "manifest.py").read_text()

    code, out, _ = sluice(capsys, "plugin", "delete", "hash_embedder", "--version", "1.0.0")
    assert code == 0 and "deleted hash_embedder 1.0.0" in out and "active version now 1.1.0" in out
    code, out, _ = sluice(capsys, "plugin", "list", "--json")
    assert code == 0 and '"version": "1.1.0"' in out and '"version": "1.0.0"' not in out

    code, _, err = sluice(capsys, "plugin", "status", "no_such_plugin")
    assert code == 1 and err.startswith("sluice: 404 ")


def test_a_refused_push_prints_every_validation_error_with_its_hint(stack, tmp_path, capsys):
    folder = hash_plugin(tmp_path / "hash_embedder")
    manifest = folder / "manifest.py"
    manifest.write_text(manifest.read_text().replace('"embedding_dim": 32', '"dimensions": 32'))
    code, out, err = sluice(capsys, "plugin", "push", str(folder))
    assert code == 1, out + err
    assert "refused hash_embedder 1.0.0" in out
    assert "manifest.py:0 [SLU811] features[0] has unknown key 'dimensions'; use 'embedding_dim'" in out
    assert "[SLU812]" in out and "    hint: " in out


def test_a_push_that_outlives_its_wait_prints_the_status_url_and_exits_3(stack, tmp_path, capsys):
    folder = hash_plugin(tmp_path / "hash_embedder")
    code, out, err = sluice(capsys, "plugin", "push", str(folder), "--wait", "0")
    assert code == 3, out + err
    assert "still validating; status: " in err and "still running after 0 s" in err
    status_url = err.split("status: ", 1)[1].split()[0]
    deadline = time.monotonic() + 120
    while True:
        outcome = httpx.get(status_url, headers={"Authorization": f"Bearer {stack.key}"}).json()
        if outcome["status"] in ("REGISTERED", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outcome["status"] == "REGISTERED", outcome
