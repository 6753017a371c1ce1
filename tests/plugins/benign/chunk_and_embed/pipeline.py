from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    RowCondition,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import ChunkParams, metadata
from .processors.chunker import Chunker, ChunkerConfig
from .processors.embedder import ChunkEmbedder


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = ChunkParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[
            StepDefinition(
                service_class=Chunker,
                resource_type=ResourceType.CPU,
                condition=RowCondition.IS_TEXT,
                config=ChunkerConfig(chunk_size=params.chunk_size, overlap=params.overlap),
                name="chunk",
            ),
            StepDefinition(service_class=ChunkEmbedder, resource_type=ResourceType.CPU, config={"batch_size": 64}, name="embed"),
        ],
    )
    return {"steps": build_pipeline_steps(pipeline)}
