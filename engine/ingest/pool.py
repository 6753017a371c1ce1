"""Warm pools: a plugin's stages kept warm in Ray actors between ingest jobs, serverless style.
TRUSTED side of the boundary (it never imports plugin code; the actors own plugin hosts).

A pool belongs to one run of one plugin version in one namespace: its key is a digest of the
namespace, the plugin id and archive digest, and everything the host is given (`run_info`: the
collection, the parameters, the features; the secrets context; the sandbox options and egress
allow-list). Two namespaces never share a pool, nor two collections, nor a version whose secrets
changed. A pool has one actor per stage group (the grouping and resources of the Ray Data job:
`engine.ingest.job.group_steps`), each owning one plugin host (`PluginStage`) that built the
plugin's steps once and keeps its model loaded.

A small job (`SLUICE_INGEST_WARM_MAX_OBJECTS`) runs through its pool instead of a Ray Data
pipeline: its rows go to the first actor in batches, each stage's output ObjectRef is the next
stage's input (so stages overlap), at most `IN_FLIGHT` batches at once, and every output table goes
to the same sink, so counts, failures and events are the job's as before. A pool idle for
`SLUICE_INGEST_WARM_IDLE_S` is shut down (scale to zero); before a Ray Data job starts, and before a
new pool is placed, idle pools give their CPUs and GPUs back (least recently used first), so warm
actors never keep a job or another tenant's pool from its resources. A pool whose actor died is
dropped and the error goes to the caller (a transient failure: the task runs again, on a new pool).

The steps' plan (`engine.ingest.job.plan_steps`, which asks a fresh host) is cached per key as well:
a warm job starts no host at all before its first batch.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from engine.ingest.worker import PluginSpec, PluginStage, StepPlan, run_info
from engine.plugins.extractors.pipeline import StepFailed

log = logging.getLogger("sluice.ingest.pool")

IN_FLIGHT = 4
"""Batches of one job in a pool at once: enough that every stage has work while the driver writes."""
RELEASE_WAIT_S = 2.0
"""How long a release waits for Ray to free a killed pool's resources before releasing another."""
PLAN_CACHE = 512
"""Plans remembered (least recently used dropped first)."""


def pool_key(spec: PluginSpec) -> str:
    """What makes two jobs able to share warm hosts: the same namespace, plugin version and run."""
    material = {
        "namespace": spec.namespace, "plugin_id": spec.plugin_id, "sha256": spec.sha256, "run": run_info(spec),
        "context": spec.context, "asset_access": spec.asset_access, "network_allow": list(spec.network_allow),
        "sandbox": spec.sandbox,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class WarmStage:
    """The Ray actor of one stage group in a pool: `PluginStage` (one plugin host), kept alive."""

    def __init__(self, spec: PluginSpec, indexes: Sequence[int], first: bool, last: bool, memory_bytes: int = 0) -> None:
        self.stage: PluginStage | None = None
        self.error: str | None = None
        try:
            self.stage = PluginStage(spec, indexes, first, last, memory_bytes)
        except Exception as exc:  # noqa: BLE001 - the plugin's build_steps failed: said by `ready`, not as a lost actor
            self.error = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"

    def ready(self) -> str | None:
        """None once the host has built the steps; else why it could not."""
        return self.error

    def run(self, table: Any) -> Any:
        if self.stage is None:
            raise StepFailed("build_steps", self.error or "the plugin's steps were not built")
        return self.stage(table)


@dataclass
class Pool:
    key: str
    namespace: str
    plugin: str
    actors: list[Any]
    cpus: float
    gpus: float
    batch_size: int
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


class PoolStopped(Exception):
    """The job running in a pool was stopped (its time limit, or the scheduler stopping)."""


class WarmPools:
    """The warm pools of one scheduler process. Thread-safe: jobs run in threads."""

    def __init__(self, *, idle_s: float, max_objects: int) -> None:
        self.idle_s = idle_s
        self.max_objects = max_objects
        self._pools: dict[str, Pool] = {}
        self._plans: collections.OrderedDict[str, list[StepPlan]] = collections.OrderedDict()
        self._lock = threading.Lock()

    # --- what the scheduler asks ---------------------------------------------------------------

    def takes(self, spec: PluginSpec, objects: int) -> bool:
        """Whether a job of `objects` objects should run in the spec's pool (warm or to be made)."""
        if self.idle_s <= 0 or objects > self.max_objects:
            return False
        pool = self._pools.get(pool_key(spec))
        return pool is None or not pool.busy

    def plan(self, spec: PluginSpec, compute: Callable[[PluginSpec], list[StepPlan]]) -> list[StepPlan]:
        """The spec's step plans: remembered, or `compute(spec)` (a Ray task that starts a host;
        idle pools make room for it first)."""
        key = pool_key(spec)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return list(self._plans[key])
        from engine.ingest.job import PLAN_CPUS

        self.release_idle(keep=key, need_cpus=PLAN_CPUS)  # idle warm actors never keep a plan from being made
        plans = compute(spec)
        with self._lock:
            self._plans[key] = list(plans)
            while len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return plans

    def stats(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"namespace": p.namespace, "plugin": p.plugin, "actors": len(p.actors), "cpus": p.cpus, "gpus": p.gpus,
                 "busy": p.busy, "idle_s": round(now - p.last_used, 1)} for p in list(self._pools.values())]

    # --- a job ---------------------------------------------------------------------------------

    def run(self, spec: PluginSpec, steps: Sequence[StepPlan], rows: Sequence[dict[str, Any]],
            sink: Callable[[pd.DataFrame], None], *, on_stop: Callable[[Callable[[], int]], None] | None = None,
            share: float = 1.0) -> None:
        """Run `rows` through the spec's pool (made first when there is none) and hand each output
        batch to `sink`. Blocks: call it from a thread. `on_stop` gets a callable that stops the job
        from another thread (the pool's actors are killed; this call then raises `PoolStopped`)."""
        import ray

        from engine.ingest.job import OUTPUT_BATCH_ROWS

        if not rows:
            return
        pool = self._take(spec, steps, share=share)
        stopped = threading.Event()

        def stop() -> int:
            stopped.set()
            self._drop(pool, "its job was stopped")
            return 1

        if on_stop is not None:
            on_stop(stop)
        try:
            problems = [p for p in ray.get([actor.ready.remote() for actor in pool.actors]) if p]
            if problems:
                self._drop(pool, "its plugin's steps could not be built")
                raise StepFailed("build_steps", problems[0])
            pending: collections.deque[Any] = collections.deque()
            for start in range(0, len(rows), pool.batch_size):
                ref: Any = _table(rows[start:start + pool.batch_size])
                for actor in pool.actors:
                    ref = actor.run.remote(ref)
                pending.append(ref)
                while len(pending) >= IN_FLIGHT:
                    _deliver(ray.get(pending.popleft()), sink, OUTPUT_BATCH_ROWS)
            while pending:
                _deliver(ray.get(pending.popleft()), sink, OUTPUT_BATCH_ROWS)
        except Exception as exc:
            if stopped.is_set():
                raise PoolStopped("the ingest job was stopped") from exc
            if _actor_lost(exc):
                self._drop(pool, f"an actor was lost: {type(exc).__name__}")
            raise
        finally:
            with self._lock:
                pool.busy = False
                pool.last_used = time.monotonic()

    # --- the pools' life ---------------------------------------------------------------------------

    def release_idle(self, *, keep: str | None = None, need_cpus: float = math.inf, need_gpus: float = 0.0) -> int:
        """Shut idle pools (least recently used first, never `keep`) until `need_cpus` and
        `need_gpus` are free in the cluster; by default every idle pool. Returns how many went."""
        import ray

        def enough() -> bool:
            free = ray.available_resources()
            return free.get("CPU", 0.0) >= need_cpus and free.get("GPU", 0.0) >= need_gpus

        released = 0
        while True:
            with self._lock:
                idle = sorted((p for p in self._pools.values() if not p.busy and p.key != keep), key=lambda p: p.last_used)
            if not idle or (not math.isinf(need_cpus) and enough()):
                return released
            self._drop(idle[0], "its resources were needed")
            released += 1
            if not math.isinf(need_cpus):  # Ray frees a killed actor's resources a moment later
                deadline = time.monotonic() + RELEASE_WAIT_S
                while time.monotonic() < deadline and not enough():
                    time.sleep(0.05)

    def reap(self) -> int:
        """Shut every pool idle for longer than `idle_s`; returns how many went."""
        now = time.monotonic()
        with self._lock:
            expired = [p for p in self._pools.values() if not p.busy and now - p.last_used >= self.idle_s]
        for pool in expired:
            self._drop(pool, f"idle for {self.idle_s:g} s")
        return len(expired)

    def close(self) -> None:
        for pool in list(self._pools.values()):
            self._drop(pool, "the scheduler stopped")

    def _take(self, spec: PluginSpec, steps: Sequence[StepPlan], *, share: float) -> Pool:
        key = pool_key(spec)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None and not pool.busy:
                pool.busy = True
                return pool
            if pool is not None:
                raise RuntimeError("the warm pool of this run is busy with another job")
        pool = self._make(key, spec, steps, share=share)
        with self._lock:
            self._pools[key] = pool
        return pool

    def _make(self, key: str, spec: PluginSpec, steps: Sequence[StepPlan], *, share: float) -> Pool:
        import ray

        from engine.ingest.job import _stage_options, cluster_resources, group_steps, with_archive_ref

        total = cluster_resources()
        share = min(1.0, max(share, 0.0)) or 1.0
        cpus, gpus = max(1.0, total.get("CPU", 1.0) * share), total.get("GPU", 0.0)
        groups = group_steps(steps)
        cpu_stages = sum(1 for g in groups if not g[0].num_gpus)
        options = [_stage_options(g, cpus=cpus / max(1, cpu_stages), gpus=gpus, blocks=1,
                                  memory=total.get("memory", math.inf) * share) for g in groups]
        need_cpus = sum(o["num_cpus"] for o in options)
        need_gpus = sum(o.get("num_gpus", 0.0) for o in options)
        self.release_idle(keep=key, need_cpus=need_cpus, need_gpus=need_gpus)
        spec_ref = with_archive_ref(spec)
        actor_class = ray.remote(WarmStage)
        actors = []
        for n, (group, opts) in enumerate(zip(groups, options, strict=True)):
            resources = {k: opts[k] for k in ("num_cpus", "num_gpus", "memory") if k in opts}
            actors.append(actor_class.options(max_restarts=0, max_concurrency=1, **resources).remote(
                spec_ref, [s.index for s in group], n == 0, n == len(groups) - 1, max(s.memory_bytes for s in group)))
        log.info("warm pool started for %s %s in namespace %s: %d actor(s), %.1f CPUs, %.1f GPUs",
                 spec.name, spec.version, spec.namespace, len(actors), need_cpus, need_gpus)
        return Pool(key=key, namespace=spec.namespace, plugin=f"{spec.name} {spec.version}", actors=actors, cpus=need_cpus,
                    gpus=need_gpus, batch_size=max(1, min(options[0]["batch_size"], 16)), busy=True)

    def _drop(self, pool: Pool, why: str) -> None:
        import ray

        with self._lock:
            if self._pools.get(pool.key) is pool:
                del self._pools[pool.key]
        for actor in pool.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone, or Ray shutting down
                pass
        log.info("warm pool of %s in namespace %s shut down: %s", pool.plugin, pool.namespace, why)


def _table(rows: Sequence[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(list(rows))


def _deliver(table: Any, sink: Callable[[pd.DataFrame], None], rows_per_batch: int) -> None:
    frame = table.to_pandas()
    for start in range(0, len(frame), rows_per_batch):
        sink(frame.iloc[start:start + rows_per_batch].reset_index(drop=True))


def _actor_lost(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError))


__all__ = ["IN_FLIGHT", "Pool", "PoolStopped", "WarmPools", "WarmStage", "pool_key"]
