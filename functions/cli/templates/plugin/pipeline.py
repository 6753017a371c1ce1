"""{{name}}: the batch pipeline. `build_steps` is called once per job with the collection's
parameters; each step is built once per worker and then called with one pandas DataFrame per batch.
"""

from engine.plugins.extractors.pipeline import (
    PipelineDefinition,
    ResourceType,
    StepDefinition,
    build_pipeline_steps,
)

from .manifest import FEATURE_NAME, Parameters, metadata
from .processors.embedder import Embedder, EmbedderConfig


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    """Declare the steps for these parameters; return {"steps": [...]}. Keep it cheap: models
    load lazily inside the steps, on the first batch."""
    params = Parameters(**(extractor_request.extractor_config.parameters or {}))
    config = EmbedderConfig(text_column=params.text_column, output_column=FEATURE_NAME,
                            batch_size=params.batch_size, normalize=params.normalize)
    steps = [StepDefinition(service_class=Embedder, resource_type=ResourceType.CPU, config=config, name="embed")]
    pipeline = PipelineDefinition(name=metadata["feature_extractor_name"], version=metadata["version"], steps=steps)
    return {"steps": build_pipeline_steps(pipeline)}
