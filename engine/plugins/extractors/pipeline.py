"""The pipeline SDK, at the import path plugin authors know:
`from engine.plugins.extractors.pipeline import PipelineDefinition, StepDefinition, ...`.

A plugin's `build_steps()` declares steps; `build_pipeline_steps()` turns them into `PipelineStep`s
with resources filled in. `StepRunner` runs one step over pandas batches — a plain class, so the
dry run and `sluice plugin test` call it directly and Ray Data wraps it at the edge
(`ds.map_batches(StepRunner, fn_constructor_kwargs={"step": step}, **step.map_batches_options())`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pandas as pd

from engine.sealed import Sealed


class PluginContractError(Exception):
    """Plugin code broke the SDK contract (what `build_steps` returns, what a step returns)."""


class StepFailed(Exception):
    """A step raised or returned something unusable; `step` names it."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step!r}: {message}")
        self.step = step


class ResourceType(str, Enum):
    """What a step runs on: sizes batches and asks Ray for resources."""

    CPU = "CPU"
    GPU = "GPU"
    API = "API"


class RowCondition(str, Enum):
    """Which rows a step processes, by MIME type; other rows pass through unchanged."""

    IS_TEXT = "IS_TEXT"
    IS_IMAGE = "IS_IMAGE"
    IS_VIDEO = "IS_VIDEO"
    IS_AUDIO = "IS_AUDIO"
    IS_PDF = "IS_PDF"
    ALWAYS = "ALWAYS"

    def matches(self, mime_type: str | None) -> bool:
        if self is RowCondition.ALWAYS:
            return True
        mime = (mime_type or "").lower().split(";", 1)[0].strip()
        if self is RowCondition.IS_PDF:
            return mime == "application/pdf"
        if self is RowCondition.IS_TEXT and mime in TEXT_MIME_TYPES:
            return True
        return mime.startswith(_MIME_PREFIX[self])

    def mask(self, batch: pd.DataFrame) -> pd.Series:
        if self is RowCondition.ALWAYS or "mime_type" not in batch.columns:
            return pd.Series(True, index=batch.index)
        return batch["mime_type"].map(self.matches).astype(bool)


TEXT_MIME_TYPES = frozenset({
    "application/json", "application/xml", "application/x-yaml", "application/yaml", "application/javascript",
    "application/x-ndjson", "application/csv", "application/x-sh",
})
"""Text that is not `text/*`: ingest passes it inline, and IS_TEXT steps see it."""

_MIME_PREFIX = {
    RowCondition.IS_TEXT: "text/",
    RowCondition.IS_IMAGE: "image/",
    RowCondition.IS_VIDEO: "video/",
    RowCondition.IS_AUDIO: "audio/",
}

BATCH_SIZE = {ResourceType.CPU: 64, ResourceType.GPU: 8, ResourceType.API: 16}
"""Default rows per batch: CPU models amortise well, GPU memory does not, APIs are latency-bound."""
API_CONCURRENCY = 8
"""Batches an API step keeps in flight by default."""


@dataclass
class StepDefinition:
    """One step as a plugin declares it. `service_class` is a class built once per worker with
    `service_class(config)` (or a callable instance used as is); it maps a DataFrame to a DataFrame."""

    service_class: Any
    resource_type: ResourceType = ResourceType.CPU
    config: Any = None
    condition: RowCondition = RowCondition.ALWAYS
    enabled: bool = True
    name: str | None = None
    batch_size: int | None = None
    num_gpus: float | None = None
    num_cpus: float | None = None
    concurrency: int | None = None
    """Workers (CPU/GPU) or batches in flight (API); None lets the platform choose."""


@dataclass
class PipelineDefinition:
    name: str
    version: str
    steps: list[StepDefinition] = field(default_factory=list)
    description: str | None = None


@dataclass(frozen=True)
class PipelineStep(metaclass=Sealed):
    """A step ready to run: disabled steps are gone and every resource has a value."""

    name: str
    service_class: Any
    config: Any = None
    resource_type: ResourceType = ResourceType.CPU
    condition: RowCondition = RowCondition.ALWAYS
    batch_size: int = BATCH_SIZE[ResourceType.CPU]
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    concurrency: int | None = None

    def map_batches_options(self) -> dict[str, Any]:
        """Ray Data `map_batches` options for this step (the caller adds `fn_constructor_kwargs`)."""
        options: dict[str, Any] = {"batch_size": self.batch_size, "batch_format": "pandas", "num_cpus": self.num_cpus}
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.concurrency:
            options["concurrency"] = self.concurrency
        return options

    def with_resources(self, **changes: Any) -> PipelineStep:
        """A copy with other resources (the GPU→CPU fallback when a cluster has no GPU)."""
        from dataclasses import replace

        return replace(self, **changes)


def _step_name(service: Any, index: int) -> str:
    target = service if isinstance(service, type) else type(service)
    return f"{index}:{getattr(target, '__name__', 'step')}"


def build_pipeline_steps(pipeline: PipelineDefinition) -> list[PipelineStep]:
    """The enabled steps of `pipeline`, with batch sizes and resources for their resource type."""
    if not isinstance(pipeline, PipelineDefinition):
        raise PluginContractError(f"build_pipeline_steps takes a PipelineDefinition, got {type(pipeline).__name__}")
    steps = []
    for index, definition in enumerate(pipeline.steps):
        if not isinstance(definition, StepDefinition):
            raise PluginContractError(
                f"pipeline {pipeline.name!r} step {index} is a {type(definition).__name__}, not a StepDefinition"
            )
        if not definition.enabled:
            continue
        steps.append(_from_definition(definition, index))
    return steps


def _from_definition(definition: StepDefinition, index: int) -> PipelineStep:
    resource = ResourceType(definition.resource_type)
    if definition.service_class is None or not callable(definition.service_class):
        raise PluginContractError(f"step {index}: service_class must be a class or a callable, got {definition.service_class!r}")
    gpus = definition.num_gpus if definition.num_gpus is not None else (1.0 if resource is ResourceType.GPU else 0.0)
    concurrency = definition.concurrency
    if concurrency is None and resource is ResourceType.API:
        concurrency = API_CONCURRENCY
    return PipelineStep(
        name=definition.name or _step_name(definition.service_class, index),
        service_class=definition.service_class,
        config=definition.config,
        resource_type=resource,
        condition=RowCondition(definition.condition),
        batch_size=definition.batch_size or BATCH_SIZE[resource],
        num_gpus=float(gpus),
        num_cpus=float(definition.num_cpus if definition.num_cpus is not None else (0.25 if resource is ResourceType.API else 1.0)),
        concurrency=concurrency,
    )


def coerce_steps(built: Any) -> list[PipelineStep]:
    """What a plugin's `build_steps()` returned, as steps. It must be a mapping with a `steps` list
    of `PipelineStep`s (from `build_pipeline_steps`), `StepDefinition`s, classes or callables."""
    if not isinstance(built, Mapping) or "steps" not in built:
        raise PluginContractError(
            f"build_steps must return a dict with a 'steps' list, got {type(built).__name__}"
            + (f" with keys {sorted(map(str, built))}" if isinstance(built, Mapping) else "")
        )
    raw = built["steps"]
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise PluginContractError(f"build_steps()['steps'] must be a list, got {type(raw).__name__}")
    steps: list[PipelineStep] = []
    for index, item in enumerate(raw):
        if isinstance(item, PipelineStep):
            steps.append(item)
        elif isinstance(item, StepDefinition):
            if item.enabled:
                steps.append(_from_definition(item, index))
        elif callable(item):
            steps.append(PipelineStep(name=_step_name(item, index), service_class=item))
        else:
            raise PluginContractError(f"build_steps()['steps'][{index}] is a {type(item).__name__}, not a step")
    return steps


def _construct(service_class: Any, config: Any) -> Callable[[pd.DataFrame], Any]:
    """Build the service the way the documented processors expect: `cls(config)`, or `cls()` for
    a class whose constructor takes no argument; a callable instance is used as is."""
    if not isinstance(service_class, type):
        return service_class
    try:
        inspect.signature(service_class).bind(config)
    except TypeError:
        return service_class()
    except ValueError:  # builtins without a signature
        pass
    return service_class(config)


class StepRunner(metaclass=Sealed):
    """Runs one step over pandas batches. The service is built on the first batch, once per
    instance (one per Ray actor), so models load once per worker."""

    def __init__(self, step: PipelineStep) -> None:
        self.step = step
        self._service: Callable[[pd.DataFrame], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def service(self) -> Callable[[pd.DataFrame], Any]:
        if self._service is None:
            try:
                self._service = _construct(self.step.service_class, self.step.config)
            except Exception as exc:
                raise StepFailed(self.step.name, f"could not be built: {type(exc).__name__}: {exc}") from exc
        return self._service

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if len(batch) == 0:
            return batch
        mask = self.step.condition.mask(batch)
        if bool(mask.all()):
            return self._run(batch.reset_index(drop=True))
        if not bool(mask.any()):
            return batch
        selected = batch[mask.to_numpy()].reset_index(drop=True)
        return _merge(batch.reset_index(drop=True), mask.to_numpy(), self._run(selected))

    def _run(self, batch: pd.DataFrame) -> pd.DataFrame:
        try:
            result = self.service(batch)
            if inspect.isawaitable(result):
                self._loop = self._loop or asyncio.new_event_loop()
                result = self._loop.run_until_complete(result)
        except StepFailed:
            raise
        except Exception as exc:
            raise StepFailed(self.step.name, f"raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, pd.DataFrame):
            raise StepFailed(self.step.name, f"returned {type(result).__name__}, expected a pandas DataFrame")
        return result.reset_index(drop=True)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _merge(batch: pd.DataFrame, mask: Any, processed: pd.DataFrame) -> pd.DataFrame:
    """Put the processed rows back where they came from. Columns the step added are None on the
    rows it did not see. A step that changed the row count (a chunker) cannot be put back in
    place: its rows come first, then the untouched rows."""
    if len(processed) != int(mask.sum()):
        return pd.concat([processed, batch[~mask]], ignore_index=True, sort=False)
    positions = [i for i, selected in enumerate(mask) if selected]
    merged = batch.copy()
    for column in processed.columns:
        values = merged[column].tolist() if column in merged.columns else [None] * len(merged)
        for source, target in enumerate(positions):
            values[target] = processed[column].iat[source]
        merged[column] = pd.Series(values, dtype=object)
    return merged


def run_steps(steps: Sequence[PipelineStep], batch: pd.DataFrame) -> pd.DataFrame:
    """Run every step in order over one batch, in this process (dry run, `sluice plugin test`)."""
    runners = [StepRunner(step) for step in steps]
    try:
        for runner in runners:
            batch = runner(batch)
        return batch
    finally:
        for runner in runners:
            runner.close()


__all__ = [
    "BATCH_SIZE", "PipelineDefinition", "PipelineStep", "PluginContractError", "ResourceType", "RowCondition",
    "StepDefinition", "StepFailed", "StepRunner", "TEXT_MIME_TYPES", "build_pipeline_steps", "coerce_steps", "run_steps",
]
