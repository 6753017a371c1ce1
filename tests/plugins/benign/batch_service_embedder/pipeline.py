from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps
from shared.inference.registry import InferenceConfigs, get_batch_service

from .manifest import ServiceParams, metadata
from .processors.clean import CleanText

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = ServiceParams(**(extractor_request.extractor_config.parameters or {}))
    embedder = get_batch_service(MINILM)
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(service_class=CleanText, resource_type=ResourceType.CPU, config={"lowercase": params.lowercase}),
            StepDefinition(
                service_class=embedder,
                resource_type=ResourceType.CPU,
                config=InferenceConfigs(text_column="clean_text", output_column_name="minilm_embedding",
                                        batch_size=params.batch_size),
            ),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
