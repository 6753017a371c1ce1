"""The model registry through REST over the embedded stack, with the validate_model function running:
multipart and presigned uploads of models built here (torch, onnx.helper, safetensors), archives
that attack the server refused by name with nothing stored, limits, namespace isolation, aliases,
delete, and the handler's idempotency on redelivery."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from events.envelope import make
from events.payloads import ModelUploadConfirmed, ObjectRef
from functions.handlers import validate_model as models_module
from functions.rest.app import create_app
from functions.runtime.run import functions_running
from infra.bootstrap import Platform, bootstrap
from infra.settings import Settings
from tests.fixtures.archives import tar_gz

pytestmark = [pytest.mark.integration, pytest.mark.torch]
ADMIN = "sk_admin_models_test-0123456789ab"
BUCKET = "sluice-models"


def auth(key: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- models built here --------------------------------------------------------------------------

def torch_bytes(obj: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def quickstart_archive() -> bytes:
    """The seeds' quickstart: torch.nn.Linear(768, 256).state_dict() as model.pt in a .tar.gz."""
    import torch

    torch.manual_seed(0)
    return tar_gz({"model.pt": torch_bytes(torch.nn.Linear(768, 256).state_dict())})


def tiny_archive() -> bytes:
    import torch

    return tar_gz({"model.pt": torch_bytes(torch.nn.Linear(4, 2).state_dict())})


class Payload:
    """Unpickling it calls `target(*args)`: what an attacker puts in a .pt."""

    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def tiny_onnx():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnx_external_outside_archive(tmp_path: Path) -> bytes:
    """model.onnx whose initializer reads its bytes from '../outside.bin' (beside the extraction)."""
    import onnx

    folder = tmp_path / "onnx-src"
    folder.mkdir()
    onnx.save_model(tiny_onnx(), str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    saved = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for entry in saved.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    return tar_gz({"model.onnx": saved.SerializeToString(), "weights.bin": (folder / "weights.bin").read_bytes()})


def safetensors_archive() -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return tar_gz({"model.safetensors": save({"weight": np.ones((3, 2), dtype=np.float32), "bias": np.zeros(2, dtype=np.float32)})})


# --- the stack ----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides) -> AsyncIterator[tuple[httpx.AsyncClient, Platform]]:
    settings = Settings(data_dir=tmp_path / "data", bus="memory", compute="none", admin_key=ADMIN, **overrides)
    async with bootstrap(settings) as platform:
        async with functions_running(platform, reconcile=False):
            transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=120) as client:
                for ns in ("acme", "globex"):
                    r = await client.post("/v1/namespaces", json={"namespace_name": ns}, headers=auth())
                    assert r.status_code == 201, r.text
                yield client, platform


@pytest.fixture
async def stack(tmp_path):
    async with running(tmp_path) as pair:
        yield pair


async def key_for(client: httpx.AsyncClient, namespace: str) -> str:
    r = await client.post(f"/v1/namespaces/{namespace}/api-keys", json={}, headers=auth())
    return r.json()["api_key"]


async def multipart(client: httpx.AsyncClient, archive: bytes, name: str, version: str = "1.0.0", model_format: str = "pytorch",
                    namespace: str = "acme", key: str = ADMIN, **fields: str) -> httpx.Response:
    """The seeds' curl form: -F file=@... -F name=... -F version=... -F model_format=... ..."""
    data = {"name": name, "version": version, "model_format": model_format, **fields}
    return await client.post(f"/v1/namespaces/{namespace}/models", files={"file": ("model.tar.gz", archive, "application/gzip")},
                             data=data, headers=auth(key))


async def presigned(client: httpx.AsyncClient, archive: bytes, name: str, version: str = "1.0.0", model_format: str = "pytorch",
                    namespace: str = "acme", key: str = ADMIN, **fields) -> httpx.Response:
    body = {"name": name, "version": version, "model_format": model_format, **fields}
    r = await client.post(f"/v1/namespaces/{namespace}/models/uploads", json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    ticket = r.json()
    assert "authorization" not in {k.lower() for k in ticket["upload_headers"]}
    put = await client.put(ticket["presigned_url"], content=archive, headers=ticket["upload_headers"])
    assert put.status_code in (200, 204), put.text
    return await client.post(ticket["confirm_url"], headers=auth(key))


async def stored_keys(platform: Platform, prefix: str = "") -> list[str]:
    return [info.key async for info in platform.store.list_objects(BUCKET, prefix)]


def first_error(r: httpx.Response) -> dict:
    return r.json()["error"]


# --- uploads that register ----------------------------------------------------------------------

async def test_the_seeds_quickstart_uploads_by_multipart_and_registers(stack):
    client, platform = stack
    archive = quickstart_archive()
    r = await multipart(client, archive, "my-embedding-model", framework="pytorch", task_type="embedding",
                        num_gpus="0", memory_gb="4.0")
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["success"] and model["model_id"] == "my-embedding-model_1_0_0"
    assert (model["status"], model["validation_status"], model["errors"]) == ("REGISTERED", "PASSED", [])
    assert (model["deployment_status"], model["cached"], model["deployed"]) == ("NOT_DEPLOYED", False, False)
    assert model["resources"] == {"num_cpus": 1.0, "num_gpus": 0.0, "memory_gb": 4.0}
    assert (model["framework"], model["task_type"]) == ("pytorch", "embedding")
    assert model["files"] == ["model.pt"] and model["details"]["parameters"] == 768 * 256 + 256
    import hashlib
    assert model["sha256"] == hashlib.sha256(archive).hexdigest() and model["size_bytes"] == len(archive)

    record = await platform.catalog.get("models", "acme|my-embedding-model_1_0_0")
    assert record["archive"] == {"bucket": BUCKET, "key": "acme/models/my-embedding-model/1.0.0/model.tar.gz"}
    assert await platform.store.get_bytes(BUCKET, record["archive"]["key"]) == archive
    assert await stored_keys(platform) == [record["archive"]["key"]]  # the upload object is gone
    got = (await client.get("/v1/namespaces/acme/models/my-embedding-model_1_0_0", headers=auth())).json()
    assert got["status"] == "REGISTERED" and got["model_archive_url"]


async def test_presigned_upload_registers_and_two_versions_coexist_in_the_list(stack):
    client, platform = stack
    r = await presigned(client, quickstart_archive(), "my-embedding-model", task_type="embedding")
    assert r.status_code == 200, r.text
    assert (r.json()["model_id"], r.json()["status"]) == ("my-embedding-model_1_0_0", "REGISTERED")
    r = await multipart(client, tiny_archive(), "my-embedding-model", version="2.0.0")
    assert r.status_code == 201, r.text

    listing = (await client.get("/v1/namespaces/acme/models", headers=auth())).json()
    assert listing["total"] == 2
    assert [(m["model_id"], m["version"], m["status"]) for m in listing["models"]] == [
        ("my-embedding-model_2_0_0", "2.0.0", "REGISTERED"), ("my-embedding-model_1_0_0", "1.0.0", "REGISTERED")]
    assert sorted(await stored_keys(platform)) == [
        "acme/models/my-embedding-model/1.0.0/model.tar.gz", "acme/models/my-embedding-model/2.0.0/model.tar.gz"]

    r = await multipart(client, tiny_archive(), "my-embedding-model", version="1.0.0")
    assert r.status_code == 409 and first_error(r)["type"] == "already_exists"
    assert "upload a new version" in first_error(r)["message"]
    r = await client.post("/v1/namespaces/acme/models/uploads", json={"name": "my-embedding-model", "version": "2.0.0",
                                                                        "model_format": "pytorch"}, headers=auth())
    assert r.status_code == 409


async def test_asking_again_for_an_unconfirmed_upload_removes_the_earlier_object(stack):
    client, platform = stack
    body = {"name": "my-embedding-model", "version": "1.0.0", "model_format": "pytorch"}
    first = (await client.post("/v1/namespaces/acme/models/uploads", json=body, headers=auth())).json()
    put = await client.put(first["presigned_url"], content=quickstart_archive(), headers=first["upload_headers"])
    assert put.status_code in (200, 204), put.text
    assert len(await stored_keys(platform, "acme/uploads/")) == 1  # PUT, never confirmed
    r = await presigned(client, quickstart_archive(), "my-embedding-model")  # the user starts over
    assert r.status_code == 200 and r.json()["status"] == "REGISTERED", r.text
    assert await stored_keys(platform, "acme/uploads/") == []
    assert await stored_keys(platform) == ["acme/models/my-embedding-model/1.0.0/model.tar.gz"]


async def test_onnx_and_safetensors_models_register(stack):
    client, _ = stack
    r = await multipart(client, tar_gz({"model.onnx": tiny_onnx().SerializeToString()}), "product-classifier",
                        model_format="onnx", task_type="classification", num_gpus="0", memory_gb="2.0")
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["model_id"] == "product-classifier_1_0_0" and model["details"]["opset"] == {"ai.onnx": 17}
    assert model["resources"]["memory_gb"] == 2.0
    r = await presigned(client, safetensors_archive(), "tiny_st", model_format="safetensors")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "REGISTERED" and r.json()["details"]["tensors"] == 2


# --- uploads that are refused -------------------------------------------------------------------

async def test_a_pickle_that_would_run_os_system_is_rejected_by_file_and_global_and_runs_nothing(stack, tmp_path):
    import torch

    client, platform = stack
    marker = tmp_path / "MARKER"
    archive = tar_gz({"model.pt": torch_bytes({"weight": torch.zeros(2), "x": Payload(os.system, f"touch {marker}")})})
    r = await multipart(client, archive, "evil-model")
    assert r.status_code == 422, r.text
    error = first_error(r)
    system = f"{os.system.__module__}.system"  # posix.system
    assert error["type"] == "model_rejected"
    assert error["message"].startswith("model evil-model_1_0_0 was rejected: model.pt: pickle") and system in error["message"]
    [finding] = [e for e in error["details"]["errors"] if system in e["message"]]
    assert finding["file"] == "model.pt" and finding["rule_id"] == "MDL301"
    assert not marker.exists()

    got = (await client.get("/v1/namespaces/acme/models/evil-model_1_0_0", headers=auth())).json()
    assert got["status"] == "REJECTED" and got["validation_errors"] == error["details"]["errors"]
    assert got["model_archive_url"] is None
    assert await stored_keys(platform) == []  # no final key, and the upload is removed

    r = await presigned(client, archive, "evil-model")  # the same archive by the other path
    assert r.status_code == 422 and system in first_error(r)["message"]
    assert not marker.exists() and await stored_keys(platform) == []


async def test_onnx_external_data_outside_and_a_tar_climbing_out_are_rejected_with_nothing_stored(stack, tmp_path):
    client, platform = stack
    r = await multipart(client, onnx_external_outside_archive(tmp_path), "onnx-escape", model_format="onnx")
    assert r.status_code == 422, r.text
    [finding] = first_error(r)["details"]["errors"]
    assert (finding["rule_id"], finding["file"]) == ("MDL502", "model.onnx")
    assert "'../outside.bin'" in finding["message"] and "outside the archive" in finding["message"]

    r = await presigned(client, tar_gz({"model.pt": tiny_archive(), "../evil.pt": b"x"}), "tar-escape")
    assert r.status_code == 422, r.text
    assert any(e["rule_id"] == "MDL111" and e["file"] == "../evil.pt" for e in first_error(r)["details"]["errors"])
    assert "../evil.pt" in first_error(r)["message"]

    r = await multipart(client, tiny_archive(), "wrong-format", model_format="onnx")
    assert r.status_code == 422 and "no .onnx file" in first_error(r)["message"]
    assert await stored_keys(platform) == []
    statuses = {m["model_id"]: m["status"] for m in (await client.get("/v1/namespaces/acme/models", headers=auth())).json()["models"]}
    assert statuses == {"onnx-escape_1_0_0": "REJECTED", "tar-escape_1_0_0": "REJECTED", "wrong-format_1_0_0": "REJECTED"}

    r = await multipart(client, tiny_archive(), "tar-escape")  # a rejected version may be uploaded again, fixed
    assert r.status_code == 201 and r.json()["status"] == "REGISTERED"


async def test_bad_requests_name_the_field(stack):
    client, _ = stack
    r = await multipart(client, tiny_archive(), "x!", version="1.0.0")
    assert r.status_code == 422 and "invalid model name 'x!'" in first_error(r)["message"]
    r = await multipart(client, tiny_archive(), "good-name", version="1.0")
    assert r.status_code == 422 and "expected X.Y.Z" in first_error(r)["message"]
    r = await multipart(client, tiny_archive(), "good-name", model_format="tensorflow")
    assert r.status_code == 422 and "accepted: pytorch, safetensors, onnx, huggingface" in first_error(r)["message"]
    r = await multipart(client, tiny_archive(), "good-name", num_gpus="lots")
    assert r.status_code == 422 and first_error(r)["details"]["field"] == "num_gpus"
    r = await multipart(client, tiny_archive(), "good-name", colour="blue")
    assert r.status_code == 422 and "unknown form field 'colour'" in first_error(r)["message"]
    r = await client.post("/v1/namespaces/acme/models", data={"name": "good-name", "version": "1.0.0", "model_format": "pytorch"},
                          files={"other": ("a", b"b")}, headers=auth())
    assert r.status_code == 422 and "'other'" in first_error(r)["message"]
    r = await client.post("/v1/namespaces/acme/models", json={"name": "good-name"}, headers=auth())
    assert r.status_code == 422 and "multipart/form-data" in first_error(r)["message"]
    r = await client.post("/v1/namespaces/acme/models/uploads", json={"name": "good-name", "version": "1.0.0",
                                                                      "model_format": "pytorch"}, headers=auth())
    r = await client.post(r.json()["confirm_url"], headers=auth())
    assert r.status_code == 409 and "PUT the archive to the presigned URL first" in first_error(r)["message"]
    assert (await client.get("/v1/namespaces/acme/models", headers=auth())).json()["total"] == 1  # only the ticket


async def test_limits_on_archive_size_and_models_per_namespace(tmp_path):
    limit = 64 * 1024
    async with running(tmp_path, models_max_per_namespace=2, models_max_archive_bytes=limit) as (client, platform):
        big = quickstart_archive()
        assert len(big) > limit
        r = await multipart(client, big, "big-model")
        assert r.status_code == 413, r.text
        assert first_error(r)["message"] == (f"the model archive is more than {limit} bytes; the limit is {limit} bytes "
                                             "(SLUICE_MODELS_MAX_ARCHIVE_BYTES)")
        r = await client.post("/v1/namespaces/acme/models/uploads", headers=auth(),
                              json={"name": "big-model", "version": "1.0.0", "model_format": "pytorch", "size_bytes": len(big)})
        assert r.status_code == 413
        r = await client.post("/v1/namespaces/acme/models/uploads", headers=auth(),
                              json={"name": "big-model", "version": "1.0.0", "model_format": "pytorch"})
        ticket = r.json()
        put = await client.put(ticket["presigned_url"], content=big, headers=ticket["upload_headers"])
        assert put.status_code == 413 and put.json()["error"]["details"]["limit_bytes"] == limit  # the local store's own cap
        assert await stored_keys(platform) == []
        record = await platform.catalog.get("models", "acme|big-model_1_0_0")
        await platform.store.put_bytes(BUCKET, record["upload"]["key"], big)  # what S3 would let through
        r = await client.post(ticket["confirm_url"], headers=auth())
        assert r.status_code == 413 and f"is {len(big)} bytes; the limit is {limit} bytes" in first_error(r)["message"]
        got = (await client.get("/v1/namespaces/acme/models/big-model_1_0_0", headers=auth())).json()
        assert got["status"] == "REJECTED" and got["errors"][0]["rule_id"] == "MDL102"
        assert await stored_keys(platform) == []

        for version in ("1.0.0", "2.0.0"):
            assert (await multipart(client, tiny_archive(), "small-model", version=version)).status_code == 201
        for attempt in (multipart(client, tiny_archive(), "small-model", version="3.0.0"),
                        client.post("/v1/namespaces/acme/models/uploads", headers=auth(),
                                    json={"name": "other", "version": "1.0.0", "model_format": "pytorch"})):
            r = await attempt
            assert r.status_code == 409, r.text
            assert (
                "already holds 2 models" in first_error(r)["message"] and "the limit is 2 models per namespace" in first_error(r)["message"]
            )
        assert (await multipart(client, tiny_archive(), "small-model", version="3.0.0", namespace="globex")).status_code == 201
        assert (await client.delete("/v1/namespaces/acme/models/small-model_1_0_0", headers=auth())).status_code == 200
        assert (await multipart(client, tiny_archive(), "small-model", version="3.0.0")).status_code == 201


# --- tenancy, aliases, delete -------------------------------------------------------------------

async def test_another_namespace_cannot_see_or_delete_a_model(stack):
    client, platform = stack
    assert (await multipart(client, tiny_archive(), "secret-model")).status_code == 201
    globex = await key_for(client, "globex")
    for method in ("GET", "DELETE"):
        r = await client.request(method, "/v1/namespaces/acme/models/secret-model_1_0_0", headers=auth(globex))
        assert r.status_code == 403, r.text
        r = await client.request(method, "/v1/namespaces/globex/models/secret-model_1_0_0", headers=auth(globex))
        assert r.status_code == 404 and "namespace 'globex'" in first_error(r)["message"]
    r = await client.put("/v1/namespaces/globex/models/secret-model_1_0_0/aliases/prod", headers=auth(globex))
    assert r.status_code == 404
    assert (await client.get("/v1/namespaces/globex/models", headers=auth(globex))).json()["models"] == []
    r = await multipart(client, tiny_archive(), "mine", namespace="globex", key=globex)  # its own namespace works
    assert r.status_code == 201
    assert (await multipart(client, tiny_archive(), "mine", namespace="acme", key=globex)).status_code == 403
    assert (await client.get("/v1/namespaces/acme/models/secret-model_1_0_0", headers=auth())).json()["status"] == "REGISTERED"


async def test_aliases_resolve_move_and_go_with_their_model(stack):
    client, platform = stack
    for version in ("1.0.0", "2.0.0"):
        assert (await multipart(client, tiny_archive(), "ranker", version=version)).status_code == 201
    base = "/v1/namespaces/acme/models"
    r = await client.put(f"{base}/ranker_1_0_0/aliases/prod", headers=auth())
    assert r.status_code == 200 and r.json() == {"model_id": "ranker_1_0_0", "name": "ranker", "alias": "prod",
                                                 "ref": "ranker@prod", "moved_from": None, "aliases": ["prod"]}
    assert (await client.get(f"{base}/ranker@prod", headers=auth())).json()["model_id"] == "ranker_1_0_0"
    assert (await client.get(f"{base}/ranker@2.0.0", headers=auth())).json()["model_id"] == "ranker_2_0_0"

    r = await client.put(f"{base}/ranker_2_0_0/aliases/prod", headers=auth())
    assert r.json()["moved_from"] == "ranker_1_0_0"
    assert (await client.get(f"{base}/ranker@prod", headers=auth())).json()["model_id"] == "ranker_2_0_0"
    assert (await client.get(f"{base}/ranker_1_0_0", headers=auth())).json()["aliases"] == []
    assert (await client.put(f"{base}/ranker@prod/aliases/staging", headers=auth())).json()["model_id"] == "ranker_2_0_0"

    r = await client.put(f"{base}/ranker_2_0_0/aliases/Prod!", headers=auth())
    assert r.status_code == 422 and "invalid alias" in first_error(r)["message"]
    r = await client.delete(f"{base}/ranker_1_0_0/aliases/staging", headers=auth())
    assert r.status_code == 404 and "points at 'ranker_2_0_0'" in first_error(r)["message"]
    r = await client.delete(f"{base}/ranker_2_0_0/aliases/staging", headers=auth())
    assert r.json() == {"deleted": True, "model_id": "ranker_2_0_0", "alias": "staging", "aliases": ["prod"]}
    r = await client.get(f"{base}/ranker@staging", headers=auth())
    assert r.status_code == 404 and "'ranker@staging' does not exist in namespace 'acme'" in first_error(r)["message"]

    r = await client.delete(f"{base}/ranker@prod", headers=auth())
    assert r.status_code == 422 and "'ranker_2_0_0'" in first_error(r)["message"]
    r = await client.delete(f"{base}/ranker_2_0_0", headers=auth())
    assert r.json() == {"deleted": True, "model_id": "ranker_2_0_0", "name": "ranker", "version": "2.0.0", "deployment_removed": False}
    assert (await client.get(f"{base}/ranker@prod", headers=auth())).status_code == 404
    assert await platform.catalog.find("model_aliases", {"namespace": "acme"}) == []
    assert await stored_keys(platform) == ["acme/models/ranker/1.0.0/model.tar.gz"]
    assert (await client.delete(f"{base}/ranker_2_0_0", headers=auth())).status_code == 404


# --- the handler --------------------------------------------------------------------------------

async def test_a_redelivered_confirm_re_emits_the_recorded_outcome_without_validating_again(stack, monkeypatch, tmp_path):
    client, platform = stack
    assert (await multipart(client, tiny_archive(), "once-model")).status_code == 201
    assert (await multipart(client, tar_gz({"../x.pt": b"x"}), "bad-model")).status_code == 422

    def never(*args, **kwargs):
        raise AssertionError("a recorded outcome must not be validated again")

    monkeypatch.setattr(models_module, "validate_model_archive", never)
    deps = {"catalog": platform.catalog, "store": platform.store, "settings": platform.settings}
    for model_id, expected in (("once-model_1_0_0", "ModelRegistered"), ("bad-model_1_0_0", "ModelRejected")):
        record = await platform.catalog.get("models", f"acme|{model_id}")
        event = make(ModelUploadConfirmed(model_id=model_id, model_format="pytorch", archive=ObjectRef(**record["upload"])),
                     namespace="acme")
        [outcome] = await models_module.handle(event, **deps)
        assert outcome.type == expected and outcome.payload.model_id == model_id
        if expected == "ModelRegistered":
            assert outcome.payload.sha256 == record["sha256"]
        else:
            assert [e.rule_id for e in outcome.payload.errors] == [e["rule_id"] for e in record["errors"]]
        stale = make(ModelUploadConfirmed(model_id=model_id, model_format="pytorch",
                                          archive=ObjectRef(bucket=BUCKET, key="acme/uploads/models/old.tar.gz")), namespace="acme")
        assert await models_module.handle(stale, **deps) == []


async def test_validation_past_its_time_limit_is_rejected_and_registers_nothing(stack, monkeypatch):
    client, platform = stack
    monkeypatch.setattr(models_module, "validation_timeout_s", lambda settings, size: 0.0)
    r = await multipart(client, tiny_archive(), "slow-model")
    assert r.status_code == 422, r.text
    assert first_error(r)["details"]["errors"][0]["rule_id"] == "MDL902"
    assert "validation took longer than" in first_error(r)["message"]
    assert await stored_keys(platform) == []
