"""The Ray Data job of one ingest task, driven from the process that owns the stores.

The driver never imports plugin code: `plan_steps` asks a Ray task for the steps' resources, and
every `map_batches` stage builds the steps itself (`engine.ingest.worker.PluginStage`). Output
batches stream back to the driver as they are produced and go to `sink`, which writes them in
batches; so the embedded vector index (one owner per folder) works the same as a Qdrant server,
and every count reported is one a store acknowledged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from engine.ingest.worker import PluginSpec, PluginStage, StepPlan, plan

log = logging.getLogger("sluice.ingest.job")

CPUS_PER_ACTOR = 4
"""Widest CPU actor: beyond about four threads one model instance scales poorly, so a bigger
machine gets more actors instead."""
OUTPUT_BATCH_ROWS = 256
"""Rows per write: one vector upsert and one catalog transaction each."""


PLAN_CPUS = 0.1
"""What the planning task reserves (it starts a host, asks it, and ends)."""


def plan_steps(spec: PluginSpec, *, timeout_s: float = 300.0) -> list[StepPlan]:
    """The plugin's steps as it builds them for this collection, computed in a Ray worker."""
    import ray

    remote = ray.remote(num_cpus=PLAN_CPUS, max_retries=0)(plan)
    return ray.get(remote.remote(spec), timeout=timeout_s)


def with_archive_ref(spec: PluginSpec) -> PluginSpec:
    """`spec` with its archive in Ray's object store (one copy however many actors get it)."""
    import ray

    return spec if not isinstance(spec.archive, (bytes, bytearray)) else replace(spec, archive=ray.put(spec.archive))


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def fit_to_cluster(steps: Sequence[StepPlan], *, gpus: float, memory: float = math.inf) -> tuple[list[StepPlan], list[str]]:
    """Steps that ask for more GPUs than the cluster has run on CPU, with their CPU batch size; a
    memory reservation larger than the whole cluster's (an actor that could never be placed) is
    dropped. Returns the steps and one warning per step changed."""
    from engine.plugins.extractors.pipeline import BATCH_SIZE, ResourceType

    fitted, warnings = [], []
    for step in steps:
        if step.num_gpus and step.num_gpus > gpus:
            warnings.append(f"step {step.name!r} needs {step.num_gpus:g} GPUs, cluster has {gpus:g}: running it on CPU")
            step = replace(step, num_gpus=0.0, resource_type=ResourceType.CPU.value,
                           batch_size=max(step.batch_size, BATCH_SIZE[ResourceType.CPU]))
        if step.memory_bytes and step.memory_bytes > memory:
            warnings.append(f"step {step.name!r} reserves {step.memory_bytes / 2**30:.1f} GB of memory (its model's memory_gb), "
                            f"cluster has {memory / 2**30:.1f} GB: running it without a reservation")
            step = replace(step, memory_bytes=0)
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


def _stage_options(group: Sequence[StepPlan], *, cpus: float, gpus: float, blocks: int,
                   memory: float = math.inf) -> dict[str, Any]:
    """`map_batches` options for a stage: its batch size and resources, and an actor pool sized to
    the cluster's share for it (`cpus`, `gpus`, `memory`) — all of it from the start: a job's actors
    load their model once, so scaling up late wastes the early minutes — never more actors than
    input blocks, and at least one (which waits for resources when none are free)."""
    import ray.data

    head = group[0]
    options: dict[str, Any] = {
        "batch_size": head.batch_size, "batch_format": "pyarrow", "num_cpus": head.num_cpus, "zero_copy_batch": False,
    }
    if head.num_gpus:
        options["num_gpus"] = head.num_gpus
        fits = max(1, int(gpus // head.num_gpus))
    elif head.concurrency:  # API steps: concurrency is what they asked for
        fits = head.concurrency
    else:
        # Fewer, wider actors: each gets up to CPUS_PER_ACTOR CPUs (its model's intra-op threads
        # follow: Ray sets OMP_NUM_THREADS, ONNX Runtime reads the assignment). Objects are
        # the unit of work here, so one large object keeps one actor busy while narrow siblings
        # would sit idle; and every actor holds a copy of the model.
        width = max(head.num_cpus, float(max(1, min(int(cpus), CPUS_PER_ACTOR))))
        options["num_cpus"] = width
        fits = max(1, int(cpus // width))
    if head.memory_bytes:
        options["memory"] = head.memory_bytes
        fits = min(fits, max(1, int(memory // head.memory_bytes)))
    size = max(1, min(fits, blocks))
    options["compute"] = ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size)
    return options


def run_job(
    spec: PluginSpec, steps: Sequence[StepPlan], rows: Sequence[dict[str, Any]], sink: Callable[[pd.DataFrame], None],
    *, on_dataset: Callable[[Any], None] | None = None, share: float = 1.0,
) -> None:
    """Run `rows` (one per object, production columns) through the steps; hand every output
    batch to `sink` as it arrives. Blocks: call it from a thread. `on_dataset` gets the dataset
    before it runs: `shut_down(dataset)` from another thread stops the job. `share` is the part of
    the cluster's CPUs and memory this job's actors are sized to: with several jobs at once, each
    its share, so a second tenant's job always finds room instead of waiting for the first to end."""
    import ray
    import ray.data

    if not rows:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.verbose_progress = False
    # Sized by what the cluster has, not by what is free this instant: the previous job's actors
    # are released a moment after it ends, and sizing by that moment's leftovers gave a job one
    # narrow actor for its whole run (half the speed). Ray places the actors once CPUs free up.
    # (Query embedders reserve no CPU, so nothing idle holds CPUs for long.)
    total, free = cluster_resources(), ray.available_resources()
    share = min(1.0, max(share, 0.0)) or 1.0
    cpus, gpus = max(1.0, total.get("CPU", 1.0) * share), total.get("GPU", 0.0)
    if free.get("CPU", 0.0) < 1:
        log.info("ingest job waits for CPUs: the cluster has %.1f of %.1f free", free.get("CPU", 0.0), cpus)
    spec_ref = with_archive_ref(spec)
    blocks = max(1, min(len(rows) // 8, 256))
    dataset: ray.data.Dataset = ray.data.from_items(list(rows), override_num_blocks=blocks)
    groups = group_steps(steps)
    for n, group in enumerate(groups):
        # stages share what is free: one stage holding every CPU would starve the next one
        cpu_stages = sum(1 for g in groups if not g[0].num_gpus)
        options = _stage_options(group, cpus=cpus / max(1, cpu_stages), gpus=gpus, blocks=blocks,
                                 memory=total.get("memory", math.inf) * share)
        if n == 0:  # objects, not rows yet: small enough batches that every actor gets several (a
            # chunker turns one object into many rows, so 64 objects can be minutes of work)
            actors = options["compute"].max_size
            options["batch_size"] = max(1, min(options["batch_size"], math.ceil(len(rows) / (actors * 4))))
        dataset = dataset.map_batches(
            PluginStage,
            fn_constructor_kwargs={
                "spec": spec_ref, "indexes": [s.index for s in group], "first": n == 0, "last": n == len(groups) - 1,
                "memory_bytes": max(s.memory_bytes for s in group),
            },
            **options,
        )
    if on_dataset is not None:
        on_dataset(dataset)
    for batch in dataset.iter_batches(batch_size=OUTPUT_BATCH_ROWS, batch_format="pandas", prefetch_batches=2):
        sink(batch)


def shut_down(dataset: Any, reason: Exception) -> int:
    """Stop a running `run_job` from another thread: shut down (force: kill the actors, and with
    them the plugin hosts) the Ray Data executions of `dataset`; returns how many ran. The
    iteration in `run_job` then ends with `reason`.

    Ray Data has no public cancel: its executions are the `StreamingExecutor` threads named after
    the dataset's id. If a Ray upgrade renames them this finds none (and says so by returning 0)."""
    import threading

    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    prefix = "StreamingExecutor-" + dataset.get_dataset_id().rsplit("_", 1)[0] + "_"
    executions = [t for t in threading.enumerate() if isinstance(t, StreamingExecutor) and t.name.startswith(prefix)]
    for execution in executions:
        execution.shutdown(force=True, exception=reason)
    return len(executions)


__all__ = [
    "OUTPUT_BATCH_ROWS", "cluster_resources", "fit_to_cluster", "gpu_shortfall", "group_steps", "plan_steps",
    "run_job",
]
