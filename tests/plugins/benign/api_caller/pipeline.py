import asyncio

from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import ApiParams, metadata
from .processors.client import ApiConfig, ApiEmbedder


def _api_key(container, name: str) -> str:
    if container is None:
        return ""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(container.secrets.get(name)) or ""
    finally:
        loop.close()


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = ApiParams(**(extractor_request.extractor_config.parameters or {}))
    config = ApiConfig(
        endpoint=str(params.endpoint),
        model=params.model,
        api_key=_api_key(container, params.secret_name),
        timeout_s=params.timeout_s,
        retries=params.retries,
    )
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(service_class=ApiEmbedder, resource_type=ResourceType.API, config=config, concurrency=4)],
    )
    return {"steps": build_pipeline_steps(pipeline)}
