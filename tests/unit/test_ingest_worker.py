"""The ingest job's parts that need no Ray: failure isolation, output records, resources."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from engine.ingest.inputs import looks_like_text
from engine.ingest.job import _stage_options, fit_to_cluster, gpu_shortfall, group_steps
from engine.ingest.worker import (
    ERROR_COLUMN,
    FIELDS_COLUMN,
    SKIPPED_COLUMN,
    STEP_COLUMN,
    VECTOR_PREFIX,
    PluginIntegrityError,
    PluginSpec,
    StepPlan,
    _model_hints,
    plugin_root,
    run_isolating,
    to_records,
)
from engine.plugins.extractors.pipeline import PipelineStep, StepRunner
from functions.services.ingest import blob_type_for, document_id_for, object_id_for
from tests.fixtures.plugins import HASH_EMBEDDER, zip_folder

pytestmark = pytest.mark.unit


class Picky:
    """Raises for any batch holding a row whose data contains 'bad'."""

    calls = 0

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        Picky.calls += 1
        if batch["data"].str.contains("bad").any():
            raise ValueError("bad row")
        return batch.assign(out=batch["data"].str.upper())


def test_a_raising_row_is_isolated_and_every_other_row_goes_on():
    Picky.calls = 0
    batch = pd.DataFrame({"data": [f"row {i}" for i in range(16)], "object_id": [f"o{i}" for i in range(16)]})
    batch.loc[5, "data"] = "bad one"
    batch.loc[11, "data"] = "bad two"
    out, failures = run_isolating(StepRunner(PipelineStep(name="picky", service_class=Picky)), batch)
    assert sorted(out["object_id"]) == sorted(f"o{i}" for i in range(16) if i not in (5, 11))
    assert (out["out"] == out["data"].str.upper()).all()
    failed = pd.concat(failures)
    assert sorted(failed["object_id"]) == ["o11", "o5"]
    assert set(failed[STEP_COLUMN]) == {"picky"} and failed[ERROR_COLUMN].str.contains("bad row").all()
    assert Picky.calls < 16, "bisection, not row by row"


def test_records_carry_vectors_fields_and_report_unusable_vectors():
    frame = pd.DataFrame({
        "document_id": ["d1", "d2", "d3", "d4"], "object_id": ["o1", "o2", "o3", "o4"],
        "data": ["one", "two", "three", "four"],
        "emb": [[0.1, 0.2, 0.3], [1.0, 2.0], None, [float("nan"), 0.0, 1.0]],
        "extra": [{"k": 1}, None, 3.5, "x"],
    })
    records, failures = to_records(frame, [("emb", 3)])
    assert list(records["document_id"]) == ["d1", "d3"]
    first = records.iloc[0]
    assert first[VECTOR_PREFIX + "emb"] == pytest.approx([0.1, 0.2, 0.3]) and not bool(first[SKIPPED_COLUMN])
    assert '"extra": {"k": 1}' in first[FIELDS_COLUMN] and "emb" not in first[FIELDS_COLUMN]
    assert bool(records.iloc[1][SKIPPED_COLUMN]) is True  # no vector at all: reported as skipped, not written
    errors = {row["object_id"]: row[ERROR_COLUMN] for row in pd.concat(failures).to_dict("records")}
    assert "has 2 dimensions, the index expects 3" in errors["o2"] and "NaN" in errors["o4"]


def _spec(tmp_path, data: bytes, namespace: str = "acme", **changes) -> PluginSpec:
    return PluginSpec(plugin_id="p", namespace=namespace, name="hash_embedder", version="1.0.0",
                      sha256=hashlib.sha256(data).hexdigest(), archive=data, sandbox={"cache_root": str(tmp_path)}, **changes)


def test_a_worker_refuses_an_archive_that_is_not_the_registered_one(tmp_path):
    data = zip_folder(HASH_EMBEDDER, top="hash_embedder")
    good = _spec(tmp_path, data)
    root = plugin_root(good)
    assert (root / "manifest.py").is_file() and root.is_relative_to(tmp_path / "acme" / "plugins")
    tampered = PluginSpec(**{**good.__dict__, "sha256": "0" * 64})
    with pytest.raises(PluginIntegrityError, match="differs from the registered"):
        plugin_root(tampered)


def test_the_plugin_cache_is_per_namespace_and_a_changed_file_is_unpacked_again(tmp_path):
    import os

    data = zip_folder(HASH_EMBEDDER, top="hash_embedder")
    root = plugin_root(_spec(tmp_path, data))
    other = plugin_root(_spec(tmp_path, data, namespace="globex"))
    assert root != other and other.is_relative_to(tmp_path / "globex")
    pipeline = root / "pipeline.py"
    original = pipeline.read_bytes()
    os.chmod(pipeline, 0o644)
    pipeline.write_bytes(original + b"\nimport os; os.system('evil')\n")  # a tampered cache, marker or not
    (root / "extra.py").parent.chmod(0o755)
    assert plugin_root(_spec(tmp_path, data)).joinpath("pipeline.py").read_bytes() == original


def test_a_models_memory_hint_raises_its_hosts_address_space_limit(tmp_path):
    from engine.ingest.worker import host_options

    spec = _spec(tmp_path, b"zip")
    assert host_options(spec).memory_bytes == 16 * 2**30  # the setting's default
    assert host_options(spec, memory_bytes=2 * 2**30).memory_bytes == 16 * 2**30  # it already fits
    assert host_options(spec, memory_bytes=10 * 2**30).memory_bytes == 24 * 2**30  # twice the model, plus the runtime
    unlimited = PluginSpec(**{**spec.__dict__, "sandbox": {"memory_bytes": None}})
    assert host_options(unlimited, memory_bytes=10 * 2**30).memory_bytes is None


def _plan(index: int, name: str, *, gpus: float = 0.0, batch: int = 64, resource: str = "CPU") -> StepPlan:
    return StepPlan(index=index, name=name, resource_type=resource, condition="ALWAYS", batch_size=batch,
                    num_gpus=gpus, num_cpus=1.0, concurrency=None)


def test_gpu_steps_run_on_cpu_with_a_warning_or_fail_when_gpus_are_required():
    steps = [_plan(0, "chunk"), _plan(1, "embed", gpus=1.0, batch=8, resource="GPU")]
    fitted, warnings = fit_to_cluster(steps, gpus=0)
    assert fitted[1].num_gpus == 0 and fitted[1].resource_type == "CPU" and fitted[1].batch_size == 64
    assert warnings == ["step 'embed' needs 1 GPUs, cluster has 0: running it on CPU"]
    assert gpu_shortfall(steps, gpus=0) == "step 'embed' needs 1 GPUs, cluster has 0"
    assert gpu_shortfall(steps, gpus=1) is None
    assert fit_to_cluster(steps, gpus=2) == (steps, [])


def test_a_models_memory_hint_reserves_memory_per_actor_and_bounds_the_pool():
    from dataclasses import replace

    step = replace(_plan(0, "project"), memory_bytes=4 * 2**30)
    options = _stage_options([step], cpus=16, gpus=0, blocks=100, memory=10 * 2**30)
    assert options["memory"] == 4 * 2**30
    assert options["compute"].max_size == 2  # ten GB hold two 4 GB actors, whatever the CPUs allow
    assert "memory" not in _stage_options([_plan(0, "chunk")], cpus=16, gpus=0, blocks=100)
    # a reservation the whole cluster cannot hold would wait for ever: dropped, with a warning
    fitted, warnings = fit_to_cluster([step], gpus=0, memory=3 * 2**30)
    assert fitted[0].memory_bytes == 0
    assert warnings == ["step 'project' reserves 4.0 GB of memory (its model's memory_gb), cluster has 3.0 GB: "
                        "running it without a reservation"]
    assert fit_to_cluster([step], gpus=0, memory=8 * 2**30) == ([step], [])
    assert not step.same_resources(_plan(1, "other"))


def test_model_hints_follow_the_namespace_models_a_service_loads_by_any_name():
    from engine.models import LazyModelMixin, lazy_model

    resources = {"enc_1_0_0": {"num_cpus": 1.0, "num_gpus": 0.0, "memory_gb": 4.0},
                 "enc@prod": {"num_cpus": 1.0, "num_gpus": 0.0, "memory_gb": 4.0},
                 "big@2.0.0": {"num_cpus": 2.0, "num_gpus": 1.0, "memory_gb": 16.0}}

    class Mixin(LazyModelMixin):
        model_id = "enc@prod"
        model_source = "namespace"

    class HubModel(LazyModelMixin):
        model_id = "enc_1_0_0"  # a Hugging Face id that happens to share the name: no hints

    class Decorated:
        @lazy_model("enc_1_0_0", model_source="namespace")
        def small(self, batch):
            return batch

        @lazy_model("big@2.0.0", model_source="namespace")
        def large(self, batch):
            return batch

    assert _model_hints(Mixin, resources) == {"num_cpus": 1.0, "num_gpus": 0.0, "memory_gb": 4.0}
    assert _model_hints(HubModel, resources) is None
    assert _model_hints(Decorated, resources) == {"num_cpus": 2.0, "num_gpus": 1.0, "memory_gb": 16.0}
    assert _model_hints(Decorated, {}) is None


def test_consecutive_steps_with_the_same_resources_share_a_stage():
    steps = [_plan(0, "a"), _plan(1, "b"), _plan(2, "g", gpus=1, resource="GPU"), _plan(3, "c")]
    assert [[s.name for s in g] for g in group_steps(steps)] == [["a", "b"], ["g"], ["c"]]
    fitted, _ = fit_to_cluster(steps, gpus=0)
    assert [[s.name for s in g] for g in group_steps(fitted)] == [["a", "b", "g", "c"]]


def test_ids_are_stable_per_object_and_version_and_types_come_from_mime_or_content():
    assert object_id_for("n", "b", "k") == object_id_for("n", "b", "k") != object_id_for("n", "b", "k2")
    assert object_id_for("n", "b", "k") != object_id_for("m", "b", "k")
    assert document_id_for("c", "b", "k", "v1") != document_id_for("c", "b", "k", "v2")
    assert document_id_for("c", "b", "k", "v1") != document_id_for("c2", "b", "k", "v1")
    assert [blob_type_for(m) for m in ("text/markdown", "application/json", "image/png", "application/pdf", "application/zip")] == [
        "text", "text", "image", "pdf", "file"]
    from engine.plugins.extractors.pipeline import RowCondition

    # what ingest passes inline as text, IS_TEXT steps (text_embedding's chunker) see
    assert all(RowCondition.IS_TEXT.matches(m) for m in ("text/plain", "application/json", "application/x-yaml"))
    assert not RowCondition.IS_TEXT.matches("image/png")
    assert looks_like_text("héllo".encode()) and not looks_like_text(b"\x00\x01PK")
    assert looks_like_text("é".encode()[:1])  # a character cut at the sample's end
