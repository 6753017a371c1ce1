"""`sluice model` against a running REST server (uvicorn on a free port, with the validate_model
function running): upload (presigned PUT with progress, then confirm) → list → alias → status →
deploy → delete, a rejected upload printing each finding, and the usual refusals.

The deploy route belongs to the model deploy work; here a middleware answers it, so the test pins
what the CLI sends and prints, whatever the route does on a machine without Ray."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
from fastapi.responses import JSONResponse

from functions.cli import main
from tests.fixtures.rest_server import RestServer, clear_cli_env, point_cli_at

pytestmark = [pytest.mark.integration, pytest.mark.torch]
ADMIN = "sk_admin_model_cli_test-012345678"


class ModelCliServer(RestServer):
    """With the model deploy route answered by a middleware (see the module's docstring);
    `deploy_calls` holds the paths it answered."""

    def __init__(self, data_dir: Path, admin_key: str) -> None:
        super().__init__(data_dir, admin_key)
        self.deploy_calls: list[str] = []

    async def middleware(self, request, call_next):
        path = request.url.path
        if request.method == "POST" and path.startswith("/v1/namespaces/") and path.endswith("/deploy") and "/models/" in path:
            self.deploy_calls.append(path)
            model_id = path.split("/")[-2]
            return JSONResponse({"success": True, "model_id": model_id, "deployment_status": "DEPLOYED", "cached": True,
                                 "message": f"Model {model_id} loaded into Ray object store"})
        return await super().middleware(request, call_next)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with ModelCliServer(tmp_path_factory.mktemp("model-cli") / "data", ADMIN) as running:
        running.key = running.create_namespace("acme")
        yield running


@pytest.fixture
def cli_env(stack, monkeypatch):
    clear_cli_env(monkeypatch)
    point_cli_at(monkeypatch, stack.url, stack.key)
    return stack


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


def sluice(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command. The server runs in this process, so its log
    lines (structlog's default prints to stdout) are dropped from what the CLI printed."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, "".join(line for line in out.splitlines(keepends=True) if not LOG_LINE.match(line)), err


class Payload:
    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def archive(path: Path, obj: object) -> Path:
    import torch

    weights = io.BytesIO()
    torch.save(obj, weights)
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("model.pt")
        info.size = len(weights.getvalue())
        weights.seek(0)
        tf.addfile(info, weights)
    return path


def linear(n_in: int, n_out: int) -> dict:
    import torch

    return torch.nn.Linear(n_in, n_out).state_dict()


def test_upload_list_alias_status_deploy_and_delete_through_the_cli(cli_env, tmp_path, capsys):
    stack = cli_env
    quickstart = archive(tmp_path / "my_model.tar.gz", linear(768, 256))
    code, out, err = sluice(capsys, "model", "upload", str(quickstart), "--name", "my-embedding-model", "--version", "1.0.0",
                            "--format", "pytorch", "--framework", "pytorch", "--task-type", "embedding",
                            "--num-gpus", "0", "--memory-gb", "4.0")
    assert code == 0, out + err
    assert "registered my-embedding-model 1.0.0" in out
    assert "model_id:   my-embedding-model_1_0_0" in out and "deployment: NOT_DEPLOYED" in out and "cached:     false" in out
    assert "resources:  num_cpus=1, num_gpus=0, memory_gb=4" in out
    assert "uploaded" in err  # stderr is not a terminal: one line, no redrawn bar
    assert stack.store_requests and all("authorization" not in h for h in stack.store_requests)

    code, out, err = sluice(capsys, "model", "upload", str(archive(tmp_path / "v2.tar.gz", linear(4, 2))), "--name",
                            "my-embedding-model", "--version", "2.0.0", "--format", "pytorch", "--json")
    assert code == 0, err
    assert json.loads(out)["model_id"] == "my-embedding-model_2_0_0"

    code, out, _ = sluice(capsys, "model", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["MODEL_ID", "VERSION", "FORMAT", "STATUS", "DEPLOYMENT", "ALIASES"]
    assert [r.split()[:4] for r in rows] == [["my-embedding-model_2_0_0", "2.0.0", "pytorch", "REGISTERED"],
                                             ["my-embedding-model_1_0_0", "1.0.0", "pytorch", "REGISTERED"]]

    code, out, _ = sluice(capsys, "model", "alias", "my-embedding-model_1_0_0", "prod")
    assert (code, out.strip()) == (0, "my-embedding-model@prod -> my-embedding-model_1_0_0")
    code, out, _ = sluice(capsys, "model", "status", "my-embedding-model@prod")
    assert code == 0 and "model_id:   my-embedding-model_1_0_0" in out and "aliases:    prod" in out

    code, out, _ = sluice(capsys, "model", "deploy", "my-embedding-model@prod")
    assert code == 0
    assert out.splitlines()[0] == "my-embedding-model@prod: deployment_status DEPLOYED, cached true"
    assert stack.deploy_calls[-1] == "/v1/namespaces/acme/models/my-embedding-model@prod/deploy"

    code, out, _ = sluice(capsys, "model", "delete", "my-embedding-model_2_0_0")
    assert (code, out.strip()) == (0, "deleted my-embedding-model_2_0_0 (my-embedding-model 2.0.0)")
    code, out, _ = sluice(capsys, "model", "alias", "my-embedding-model_1_0_0", "prod", "--remove")
    assert code == 0 and "removed alias prod" in out
    code, out, _ = sluice(capsys, "model", "list", "--json")
    assert [m["model_id"] for m in json.loads(out)["models"]] == ["my-embedding-model_1_0_0"]

    code, _, err = sluice(capsys, "model", "upload", str(quickstart), "--name", "my-embedding-model", "--version", "1.0.0",
                          "--format", "pytorch")
    assert code == 1 and "409 already_exists" in err and "upload a new version" in err


def test_a_rejected_upload_prints_each_finding_and_exits_1(cli_env, tmp_path, capsys):
    import torch

    marker = tmp_path / "MARKER"
    evil = archive(tmp_path / "evil.tar.gz", {"weight": torch.zeros(2), "x": Payload(os.system, f"touch {marker}"),
                                               "y": Payload(eval, "1")})
    code, out, err = sluice(capsys, "model", "upload", str(evil), "--name", "evil-model", "--version", "1.0.0", "--format", "pytorch")
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[0].startswith("rejected evil-model 1.0.0: ")
    system = f"{os.system.__module__}.system"
    assert any(line.startswith(f"  model.pt [MDL301] pickle imports {system}") for line in lines)
    assert any("builtins.eval" in line for line in lines)
    assert not marker.exists()
    code, out, _ = sluice(capsys, "model", "status", "evil-model_1_0_0", "--json")
    assert code == 0 and json.loads(out)["status"] == "REJECTED"


def test_refusals_are_stated_before_anything_is_sent(cli_env, tmp_path, capsys, monkeypatch):
    code, _, err = sluice(capsys, "model", "upload", str(tmp_path), "--name", "x-model", "--version", "1.0.0", "--format", "onnx")
    assert code == 2 and "not a .tar.gz file; make one with: tar -czf" in err
    code, _, err = sluice(capsys, "model", "status", "nope_1_0_0")
    assert code == 1 and "404 not_found" in err and "namespace 'acme'" in err
    monkeypatch.delenv("SLUICE_NAMESPACE")
    code, _, err = sluice(capsys, "model", "list")
    assert code == 2 and "no namespace" in err
