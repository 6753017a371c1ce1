from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import EmbedderParams, metadata
from .processors.core import EmbedderConfig, TextEmbedder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    """One CPU step: embed batch["data"] into text_embedding."""
    params = EmbedderParams(**(extractor_request.extractor_config.parameters or {}))
    config = EmbedderConfig(normalize=params.normalize, batch_size=params.batch_size, max_chars=params.max_chars)
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(service_class=TextEmbedder, resource_type=ResourceType.CPU, config=config),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
