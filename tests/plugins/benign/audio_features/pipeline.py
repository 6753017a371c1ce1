from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    RowCondition,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import AudioParams, metadata
from .processors.core import AudioConfig, AudioFeatures


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = AudioParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(
                service_class=AudioFeatures,
                resource_type=ResourceType.CPU,
                condition=RowCondition.IS_AUDIO,
                config=AudioConfig(**params.model_dump()),
                batch_size=4,
            )
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
