"""Ray, behind the same explicit life as every adapter: a local Ray by default, or a cluster."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from events.lifecycle import Health, Lifecycle


class Compute(Protocol):
    """What handlers ask of compute: whether Ray-backed work can run, and the cluster's resources."""

    runs_jobs: bool

    def resources(self) -> dict[str, float]: ...


class RayCompute(Lifecycle):
    adapter_name = "ray"
    runs_jobs = True
    """Handlers ask this, not the adapter's type, whether Ray-backed work can run."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, namespace: str = "sluice") -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.namespace = namespace
        self._owns_ray = False

    async def _connect(self) -> None:
        import ray  # heavy: imported only when Ray is actually used

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"namespace": self.namespace, "ignore_reinit_error": True, "log_to_driver": False}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs.update(num_cpus=self.num_cpus, include_dashboard=False)
        await asyncio.to_thread(ray.init, **kwargs)
        self._owns_ray = True

    async def _close(self) -> None:
        if self._owns_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False

    def resources(self) -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    async def _health(self) -> Health:
        resources = await asyncio.to_thread(self.resources)
        return Health(
            status="ok",
            adapter="ray-cluster" if self.address else "ray-local",
            detail={"cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)},
        )


class NoCompute(Lifecycle):
    """`compute=none`: the platform runs, Ray-backed work is refused with a clear reason."""

    adapter_name = "none"
    runs_jobs = False

    def resources(self) -> dict[str, float]:
        return {}

    async def _health(self) -> Health:
        return Health(status="degraded", adapter="none", detail={"reason": "compute disabled (SLUICE_COMPUTE=none)"})


ComputeAdapter = RayCompute | NoCompute
