from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import RtParams, metadata
from .processors.core import BatchEncoder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = RtParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(service_class=BatchEncoder, resource_type=ResourceType.CPU, config={"normalize": params.normalize})],
    )
    return {"steps": build_pipeline_steps(pipeline)}
