from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    RowCondition,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import VlmParams, metadata
from .processors.captioner import CaptionEmbedder, Captioner, CaptionerConfig


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = VlmParams(**(extractor_request.extractor_config.parameters or {}))
    llm = container.llm if container is not None else None
    config = CaptionerConfig(llm=llm, provider=params.provider, model=params.model,
                             instruction=params.instruction, max_concurrency=params.max_concurrency)
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(service_class=Captioner, resource_type=ResourceType.API,
                           condition=RowCondition.IS_IMAGE, config=config),
            StepDefinition(service_class=CaptionEmbedder, resource_type=ResourceType.CPU, config=None),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
