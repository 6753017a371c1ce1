from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import OnnxParams, metadata
from .processors.core import OnnxEmbedder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = OnnxParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(service_class=OnnxEmbedder, resource_type=ResourceType.CPU, config=params.model_dump())],
    )
    return {"steps": build_pipeline_steps(pipeline)}
