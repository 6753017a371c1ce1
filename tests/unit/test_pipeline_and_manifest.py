"""The pipeline SDK (steps, row conditions, StepRunner) and the manifest validator, directly."""

from __future__ import annotations

import types

import pandas as pd
import pytest

from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    PluginContractError,
    ResourceType,
    RowCondition,
    StepDefinition,
    StepFailed,
    StepRunner,
    build_pipeline_steps,
    coerce_steps,
    run_steps,
)
from engine.plugins.frame import PRODUCTION_COLUMNS, add_input_aliases, frame, sample_frame
from engine.plugins.manifest import check_features, validate_manifest

pytestmark = pytest.mark.unit


class Upper:
    def __init__(self, config):
        self.column = (config or {}).get("column", "upper")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch[self.column] = batch["data"].str.upper()
        return batch


class Chunker:
    def __init__(self, config=None, **kwargs):
        pass

    def __call__(self, batch):
        rows = [dict(r, data=part) for r in batch.to_dict("records") for part in r["data"].split()]
        return pd.DataFrame(rows)


def mixed() -> pd.DataFrame:
    return frame([
        {"data": "hello world", "mime_type": "text/plain", "object_id": "a"},
        {"data": "file:///x.png", "mime_type": "image/png", "blob_type": "image", "object_id": "b"},
        {"data": "more text", "mime_type": "text/markdown", "object_id": "c"},
    ])


def test_resource_types_get_the_documented_batch_sizes_and_gpus():
    steps = build_pipeline_steps(PipelineDefinition(name="p", version="1", steps=[
        StepDefinition(service_class=Upper, resource_type=ResourceType.CPU),
        StepDefinition(service_class=Upper, resource_type=ResourceType.GPU),
        StepDefinition(service_class=Upper, resource_type=ResourceType.API),
    ]))
    assert [(s.batch_size, s.num_gpus) for s in steps] == [(64, 0.0), (8, 1.0), (16, 0.0)]
    assert steps[2].concurrency and steps[1].map_batches_options()["num_gpus"] == 1.0


def test_disabled_steps_are_dropped():
    steps = build_pipeline_steps(PipelineDefinition(name="p", version="1", steps=[
        StepDefinition(service_class=Chunker, enabled=False), StepDefinition(service_class=Upper),
    ]))
    assert [s.service_class for s in steps] == [Upper]


def test_a_row_condition_runs_the_step_on_matching_rows_only_and_keeps_row_order():
    [step] = build_pipeline_steps(PipelineDefinition(name="p", version="1", steps=[
        StepDefinition(service_class=Upper, condition=RowCondition.IS_TEXT, config={"column": "up"}),
    ]))
    out = StepRunner(step)(mixed())
    assert out["object_id"].tolist() == ["a", "b", "c"]
    assert out["up"].tolist() == ["HELLO WORLD", None, "MORE TEXT"]


def test_a_step_that_splits_rows_keeps_them_all():
    [step] = coerce_steps({"steps": [StepDefinition(service_class=Chunker, condition=RowCondition.IS_TEXT)]})
    out = StepRunner(step)(mixed())
    assert sorted(out["data"]) == sorted(["hello", "world", "more", "text", "file:///x.png"])


def test_build_steps_may_return_callables_and_instances_as_the_secrets_example_does():
    steps = coerce_steps({"steps": [Upper({"column": "u"})], "prepare": lambda ds: ds})
    assert run_steps(steps, mixed())["u"].tolist()[0] == "HELLO WORLD"


def test_async_processors_are_awaited():
    class Async:
        def __init__(self, config):
            pass

        async def __call__(self, batch):
            batch["n"] = len(batch)
            return batch

    assert run_steps(coerce_steps({"steps": [Async]}), mixed())["n"].tolist() == [3, 3, 3]


def test_a_step_returning_something_else_than_a_dataframe_names_the_step():
    class Bad:
        def __init__(self, config):
            pass

        def __call__(self, batch):
            return batch.to_dict()

    with pytest.raises(StepFailed, match=r"step '0:Bad': returned dict, expected a pandas DataFrame"):
        run_steps(coerce_steps({"steps": [Bad]}), mixed())


@pytest.mark.parametrize("returned", [None, [], {"stages": []}, {"steps": "Upper"}, {"steps": [42]}])
def test_build_steps_returning_the_wrong_shape_is_a_contract_error(returned):
    with pytest.raises(PluginContractError):
        coerce_steps(returned)


def test_row_conditions_follow_mime_types():
    assert RowCondition.IS_PDF.matches("application/pdf") and not RowCondition.IS_PDF.matches("text/plain")
    assert RowCondition.IS_IMAGE.matches("image/jpeg; q=1") and RowCondition.ALWAYS.matches(None)


def test_sample_frames_carry_every_production_column(tmp_path):
    for kind in ("text", "image", "audio", "pdf"):
        batch = sample_frame(kind, tmp_path / kind)
        assert list(batch.columns) == list(PRODUCTION_COLUMNS) and len(batch) == 2
        assert (batch["blob_type"] == kind).all()


def test_input_schema_text_fields_alias_data_on_text_rows():
    out = add_input_aliases(mixed(), ["text"])
    assert out["text"].tolist() == ["hello world", None, "more text"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"type": "embedding", "feature_name": "v", "embedding_dim": 3, "distance_metric": "cosine"}, "unknown key 'type'; use 'feature_type'"),  # noqa: E501 - one case per line
        ({"feature_type": "embedding", "name": "v", "embedding_dim": 3, "distance_metric": "cosine"}, "unknown key 'name'; use 'feature_name'"),  # noqa: E501 - one case per line
        ({"feature_type": "embedding", "feature_name": "v", "dimensions": 3, "distance_metric": "cosine"}, "unknown key 'dimensions'; use 'embedding_dim'"),  # noqa: E501 - one case per line
        ({"feature_type": "embedding", "feature_name": "v", "embedding_dim": 3, "distance": "cosine"}, "unknown key 'distance'; use 'distance_metric'"),  # noqa: E501 - one case per line
        ({"feature_type": "embedding", "feature_name": "v", "embeding_dim": 3, "distance_metric": "cosine"}, "unknown key 'embeding_dim'; use 'embedding_dim'"),  # noqa: E501 - one case per line
        ({"feature_type": "embedding", "feature_name": "v", "embedding_dim": 3, "distance_metric": "euclidean"}, "distance_metric is 'euclidean'; use 'euclid'"),  # noqa: E501 - one case per line
        ({"feature_type": "embedding", "feature_name": "v", "embedding_dim": "384", "distance_metric": "cosine"}, "embedding_dim is '384'"),
        ({"feature_type": "vector", "feature_name": "v", "embedding_dim": 3, "distance_metric": "cosine"}, "feature_type is 'vector'"),
    ],
)
def test_each_wrong_feature_entry_is_named_with_the_right_key(entry, expected):
    specs, findings = check_features([entry])
    assert specs == []
    assert any(expected in f.message and f.severity == "error" for f in findings), [f.message for f in findings]


def test_a_missing_key_is_named_alongside_the_wrong_one_found_instead():
    _, findings = check_features([{"type": "embedding", "feature_name": "v", "embedding_dim": 3, "distance_metric": "dot"}])
    assert any("missing 'feature_type' (found 'type' instead)" in f.message for f in findings)


def test_a_manifest_in_module_attribute_style_is_read():
    module = types.ModuleType("manifest")
    module.feature_extractor_name = "image_classifier"
    module.version = "1.0.0"
    module.features = [{"feature_name": "image_embedding", "feature_type": "embedding", "embedding_dim": 512, "distance_metric": "cosine"}]
    module.output_schema = {"labels": {"type": "array"}}
    summary, findings = validate_manifest(module, expected_name="image_classifier", expected_version="1.0.1")
    assert summary is not None and summary.features[0].embedding_dim == 512
    assert [f.rule_id for f in findings] == ["SLU803"]  # version mismatch: a warning, the upload wins


def test_a_manifest_naming_another_plugin_is_an_error():
    module = types.ModuleType("manifest")
    module.metadata = {"feature_extractor_name": "other", "version": "1.0.0"}
    module.features = []
    summary, findings = validate_manifest(module, expected_name="mine")
    assert summary is None and any(f.rule_id == "SLU802" for f in findings)
