"""The Ray Data job of one ingest task, driven from the process that owns the stores.

The driver never imports plugin code: `plan_steps` asks a Ray task for the steps' resources, and
every `map_batches` stage builds the steps itself (`engine.ingest.worker.PluginStage`). Output
batches stream back to the driver as they are produced and go to `sink`, which writes them in
batches; so the embedded vector index (one owner per folder) works the same as a Qdrant server,
and every count reported is one a store acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from engine.ingest.worker import PluginSpec, PluginStage, StepPlan, plan

log = logging.getLogger("sluice.ingest.job")

OUTPUT_BATCH_ROWS = 256
"""Rows per write: one vector upsert and one catalog transaction each."""


def plan_steps(spec: PluginSpec, *, timeout_s: float = 300.0) -> list[StepPlan]:
    """The plugin's steps as it builds them for this collection, computed in a Ray worker."""
    import ray

    remote = ray.remote(num_cpus=0.1, max_retries=0)(plan)
    return ray.get(remote.remote(spec), timeout=timeout_s)


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def fit_to_cluster(steps: Sequence[StepPlan], *, gpus: float) -> tuple[list[StepPlan], list[str]]:
    """Steps that ask for more GPUs than the cluster has run on CPU, with their CPU batch size.
    Returns the steps and one warning per step moved."""
    from engine.plugins.extractors.pipeline import BATCH_SIZE, ResourceType

    fitted, warnings = [], []
    for step in steps:
        if step.num_gpus and step.num_gpus > gpus:
            warnings.append(f"step {step.name!r} needs {step.num_gpus:g} GPUs, cluster has {gpus:g}: running it on CPU")
            step = replace(step, num_gpus=0.0, resource_type=ResourceType.CPU.value,
                           batch_size=max(step.batch_size, BATCH_SIZE[ResourceType.CPU]))
        fitted.append(step)
    return fitted, warnings


def gpu_shortfall(steps: Sequence[StepPlan], *, gpus: float) -> str | None:
    """Why the job cannot run when GPUs are required, or None."""
    for step in steps:
        if step.num_gpus and step.num_gpus > gpus:
            return f"step {step.name!r} needs {step.num_gpus:g} GPUs, cluster has {gpus:g}"
    return None


def group_steps(steps: Sequence[StepPlan]) -> list[list[StepPlan]]:
    """Consecutive steps with the same resources share one stage (one actor runs them in turn)."""
    groups: list[list[StepPlan]] = []
    for step in steps:
        if groups and groups[-1][-1].same_resources(step):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def _stage_options(group: Sequence[StepPlan], cpus: float) -> dict[str, Any]:
    head = group[0]
    options: dict[str, Any] = {
        "batch_size": head.batch_size, "batch_format": "pandas", "num_cpus": head.num_cpus, "zero_copy_batch": False,
    }
    if head.num_gpus:
        options["num_gpus"] = head.num_gpus
        options["concurrency"] = head.concurrency or 1
    elif head.concurrency:
        options["concurrency"] = head.concurrency
    else:  # CPU: as many actors as the cluster's CPUs allow, starting with one
        options["concurrency"] = (1, max(1, int(cpus // max(head.num_cpus, 0.01))))
    return options


def run_job(
    spec: PluginSpec, steps: Sequence[StepPlan], rows: Sequence[dict[str, Any]], sink: Callable[[pd.DataFrame], None],
) -> None:
    """Run `rows` (one per object, production columns) through the steps; hand every output
    batch to `sink` as it arrives. Blocks: call it from a thread."""
    import ray
    import ray.data

    if not rows:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.verbose_progress = False
    cpus = cluster_resources().get("CPU", 1.0)
    spec_ref = replace(spec, archive=spec.archive if not isinstance(spec.archive, (bytes, bytearray)) else ray.put(spec.archive))
    dataset = ray.data.from_items(list(rows), override_num_blocks=max(1, min(len(rows) // 32, 64)))
    groups = group_steps(steps)
    for n, group in enumerate(groups):
        dataset = dataset.map_batches(
            PluginStage,
            fn_constructor_kwargs={
                "spec": spec_ref, "indexes": [s.index for s in group], "first": n == 0, "last": n == len(groups) - 1,
            },
            **_stage_options(group, cpus),
        )
    for batch in dataset.iter_batches(batch_size=OUTPUT_BATCH_ROWS, batch_format="pandas", prefetch_batches=2):
        sink(batch)


__all__ = ["OUTPUT_BATCH_ROWS", "cluster_resources", "fit_to_cluster", "gpu_shortfall", "group_steps", "plan_steps", "run_job"]
