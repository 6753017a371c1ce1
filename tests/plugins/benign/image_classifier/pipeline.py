from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    RowCondition,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import ClassifierParams, metadata
from .processors.core import ClassifierConfig, ImageClassifier


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = ClassifierParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(
                service_class=ImageClassifier,
                resource_type=ResourceType.GPU,
                condition=RowCondition.IS_IMAGE,
                config=ClassifierConfig(weights_url=params.weights_url, top_k=params.top_k, image_size=params.image_size),
                batch_size=16,
            ),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
