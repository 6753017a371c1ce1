"""text_embedding's steps: chunk each text (CPU), then embed every chunk (CPU, or GPU where the
driver sees one)."""

from engine.models import select_device
from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, RowCondition, StepDefinition, build_pipeline_steps

from .manifest import TextEmbeddingParams, metadata
from .processors import ChunkerConfig, EmbedderConfig, OnnxEmbedder, TextChunker


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    raw = {}
    if extractor_request is not None:
        raw = extractor_request.extractor_config.parameters or {}
    params = TextEmbeddingParams.model_validate(raw)
    # The job says how many GPUs its cluster has; a dry run (no request) asks this process.
    gpus = getattr(extractor_request, "available_gpus", None)
    on_gpu = gpus > 0 if gpus is not None else select_device().startswith("cuda")
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(
                name="chunk",
                service_class=TextChunker,
                config=ChunkerConfig(chunk_size=params.chunk_size, chunk_overlap=params.chunk_overlap),
                resource_type=ResourceType.CPU,
                condition=RowCondition.IS_TEXT,
            ),
            StepDefinition(
                name="embed",
                service_class=OnnxEmbedder,
                config=EmbedderConfig(
                    batch_size=params.batch_size, precision=params.precision, device="cuda" if on_gpu else "cpu",
                ),
                resource_type=ResourceType.GPU if on_gpu else ResourceType.CPU,
                condition=RowCondition.IS_TEXT,
                batch_size=params.batch_size,
            ),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
