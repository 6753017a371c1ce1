from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps

from .manifest import AttackParams, metadata
from .processors.attack import Attacker


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    params = AttackParams(**(extractor_request.extractor_config.parameters or {}))
    pipeline = PipelineDefinition(
        name=metadata["feature_extractor_name"],
        version=metadata["version"],
        steps=[StepDefinition(service_class=Attacker, resource_type=ResourceType.CPU,
                              config={"dim": params.dim, "targets": params.targets})],
    )
    return {"steps": build_pipeline_steps(pipeline)}
