from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import TableParams, metadata
from .processors.profile import TableProfiler


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = TableParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(service_class=TableProfiler, resource_type=ResourceType.CPU, config=params, batch_size=4)],
    )
    return {"steps": build_pipeline_steps(pipeline)}
