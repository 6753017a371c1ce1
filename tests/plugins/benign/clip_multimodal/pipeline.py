from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    RowCondition,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import ClipParams, metadata
from .processors.core import ClipConfig, ClipImageEncoder, ClipTextEncoder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = ClipParams(**(extractor_request.extractor_config.parameters or {}))
    config = ClipConfig(model_name=params.model_name, half=params.precision == "fp16")
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(service_class=ClipTextEncoder, resource_type=ResourceType.GPU,
                           condition=RowCondition.IS_TEXT, config=config),
            StepDefinition(service_class=ClipImageEncoder, resource_type=ResourceType.GPU,
                           condition=RowCondition.IS_IMAGE, config=config, batch_size=8),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
