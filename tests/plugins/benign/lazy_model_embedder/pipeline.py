from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import LazyParams, metadata
from .processors.core import LazyEmbedder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = LazyParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(service_class=LazyEmbedder, resource_type=ResourceType.GPU, config=params)],
    )
    return {"steps": build_pipeline_steps(pipeline)}
