"""What a plugin's `build_steps(extractor_request, container=None, base_steps=None, **kwargs)` receives.

Plugins read `extractor_request.extractor_config.parameters`, as documented for the hosted product.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ExtractorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_extractor_name: str = Field(description="Plugin name.", examples=["my_extractor"])
    version: str = Field(description="Plugin version X.Y.Z.", examples=["1.0.0"])
    parameters: dict[str, Any] = Field(default_factory=dict, description="The collection's parameters for the plugin.")
    input_mappings: dict[str, Any] = Field(
        default_factory=dict, description="Metadata only: it never renames DataFrame columns (the text is in `data`)."
    )


class ExtractorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(description="Namespace the run belongs to.")
    feature_extractor_id: str = Field(description="Plugin version id (`plugin_id`).")
    collection_id: str | None = Field(default=None, description="Collection being processed; None in a dry run.")
    extractor_config: ExtractorConfig
    dry_run: bool = Field(default=False, description="True while the register function validates the plugin.")
    available_gpus: int = Field(
        default=0, ge=0,
        description="GPUs the cluster running the job has. A step may ask for a GPU when this is > 0; "
        "a GPU step on a cluster without one runs on CPU (or the job fails when SLUICE_REQUIRE_GPU is set).",
    )
