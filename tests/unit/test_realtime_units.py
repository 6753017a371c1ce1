"""Realtime pieces without Ray: serving plans from manifest hints, Serve options, the manifest's
`realtime_config` checks, answers of realtime services, and failure messages."""

from __future__ import annotations

import types

import numpy as np
import pytest

from engine.plugins.manifest import validate_manifest
from engine.realtime.answers import RealtimeContractError, plain, vector_of, vectors_per_text
from engine.realtime.control import GpuUnavailable, app_name, deployment_options, serving_plan
from functions.records.deployments import batch_only_reason
from functions.services.deploy import failure_text

pytestmark = pytest.mark.unit


def test_app_names_carry_the_namespace_and_the_version():
    assert app_name("acme", "hash", "1.0.0") == "sluice.acme.hash.1.0.0"
    assert app_name("acme", "hash", "1.0.0") != app_name("globex", "hash", "1.0.0")
    assert app_name("acme", "hash", "1.0.0") != app_name("acme", "hash", "2.0.0")


def test_default_plan_is_one_replica_sharing_cpus():
    plan = serving_plan(None, step_gpus=0, cluster_gpus=0, require_gpu=False)
    assert (plan.min_replicas, plan.max_replicas, plan.num_cpus, plan.num_gpus, plan.warning) == (1, 1, 0.0, 0.0, None)
    options = deployment_options(plan)
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.0}


def test_hints_give_autoscaling_and_reserved_resources():
    plan = serving_plan({"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2, "num_cpus": 1,
                         "max_batch_size": 8, "batch_wait_timeout_ms": 5}, step_gpus=0, cluster_gpus=0, require_gpu=False)
    options = deployment_options(plan)
    assert options["autoscaling_config"] == {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}
    assert "num_replicas" not in options and options["ray_actor_options"]["num_cpus"] == 1.0
    assert plan.max_batch_size == 8 and plan.batch_wait_timeout_s == pytest.approx(0.005)


def test_gpu_steps_get_a_gpu_when_the_cluster_has_one_and_fall_back_or_fail_when_not():
    assert serving_plan(None, step_gpus=1, cluster_gpus=1, require_gpu=False).num_gpus == 1.0
    assert deployment_options(serving_plan(None, step_gpus=1, cluster_gpus=1, require_gpu=False))["ray_actor_options"]["num_gpus"] == 1.0
    assert serving_plan({"num_gpus": 0.25}, step_gpus=1, cluster_gpus=1, require_gpu=False).num_gpus == 0.25
    fallback = serving_plan(None, step_gpus=1, cluster_gpus=0, require_gpu=False)
    assert fallback.num_gpus == 0 and "running on CPU" in fallback.warning
    with pytest.raises(GpuUnavailable, match="SLUICE_REQUIRE_GPU"):
        serving_plan(None, step_gpus=1, cluster_gpus=0, require_gpu=True)


def _manifest(**attrs) -> types.ModuleType:
    module = types.ModuleType("manifest")
    module.metadata = {"feature_extractor_name": "demo", "version": "1.0.0"}
    module.features = [{"feature_type": "embedding", "feature_name": "v", "embedding_dim": 4, "distance_metric": "cosine"}]
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_realtime_config_is_checked_key_by_key():
    summary, findings = validate_manifest(_manifest(realtime_config={"min_replicas": 1, "max_replicas": 3, "num_gpus": 1}))
    assert not [f for f in findings if f.severity == "error"]
    assert summary.realtime_config == {"min_replicas": 1, "max_replicas": 3, "num_gpus": 1}

    summary, findings = validate_manifest(_manifest(realtime_config={"max_replica": 3}))
    assert summary is None and findings[0].rule_id == "SLU823" and "did you mean 'max_replicas'" in findings[0].message
    _, findings = validate_manifest(_manifest(realtime_config={"min_replicas": 3, "max_replicas": 2}))
    assert "below min_replicas" in findings[0].message
    _, findings = validate_manifest(_manifest(realtime_config={"num_gpus": -1}))
    assert findings[0].rule_id == "SLU823" and "num_gpus" in findings[0].message
    _, findings = validate_manifest(_manifest(realtime_config=[1, 2]))
    assert "not a dict" in findings[0].message


def test_vectors_are_read_by_feature_name_or_embedding_and_checked():
    assert vector_of({"v": np.ones(4, dtype=np.float32)}, "v", 4) == [1.0] * 4
    assert vector_of({"embedding": [0.5] * 4, "label": "x"}, "v", 4) == [0.5] * 4
    with pytest.raises(RealtimeContractError, match="expects 4"):
        vector_of({"embedding": [1.0] * 3}, "v", 4)
    with pytest.raises(RealtimeContractError, match="without 'embedding' or 'v'"):
        vector_of({"vector": [1.0] * 4}, "v", 4)
    with pytest.raises(RealtimeContractError, match="NaN"):
        vector_of({"v": [float("nan")] * 4}, "v", 4)
    with pytest.raises(RealtimeContractError, match="not a dict"):
        vector_of([1.0] * 4, "v", 4)


def test_a_texts_answer_batches_only_when_it_holds_one_vector_per_text():
    assert len(vectors_per_text({"embeddings": [[1.0] * 4, [2.0] * 4]}, "v", 2)) == 2
    assert len(vectors_per_text({"v": np.ones((2, 4))}, "v", 2)) == 2
    assert vectors_per_text({"embedding": [1.0] * 4}, "v", 2) is None  # a service that read only `text`
    assert vectors_per_text({"embedding": [[1.0] * 4]}, "v", 2) is None
    assert vectors_per_text("nope", "v", 2) is None


def test_plain_makes_answers_json_safe():
    assert plain({"a": np.float32(1.5), "b": np.arange(2), "c": (1, float("inf"))}) == {"a": 1.5, "b": [0, 1], "c": [1, None]}


def test_failure_text_leads_with_the_plugins_error_and_keeps_its_frames():
    message = (
        "The deployment failed to start 2 times in a row. Error:\n\x1b[36mray::x:plugin.initialize_and_get_metadata()\x1b[39m\n"
        '  File "/venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 10, in initialize\n'
        "    ^^^^^^^^^^\n"
        '  File "/tmp/sluice-plugins/abc/hash_realtime/realtime.py", line 12, in __init__\n'
        '    raise RuntimeError("model weights are missing")\n'
        "RuntimeError: model weights are missing\n"
    )
    text = failure_text(message)
    assert text.startswith("RuntimeError: model weights are missing")
    assert "realtime.py" in text and "site-packages" not in text and "^^^" not in text


def test_versions_without_realtime_or_text_features_are_batch_only():
    assert batch_only_reason({"has_realtime": True, "manifest": {"features": []}}) is None
    assert batch_only_reason({"manifest": {"features": [{"feature_name": "v"}], "supported_input_types": ["text"]}}) is None
    assert "batch-only" in batch_only_reason({"manifest": {"features": []}})
    assert "text" in batch_only_reason({"manifest": {"features": [{"feature_name": "v"}], "supported_input_types": ["image"]}})
