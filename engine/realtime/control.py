"""Ray Serve, as the deploy function and the retriever use it: one application per plugin version.

* **Names**: `sluice.{namespace}.{plugin_name}.{version}`. The namespace is part of the name, so two
  tenants' plugins of the same name never share (or replace) an application, and a version never
  replaces another: a collection's queries go to the version that built its index.
* **No HTTP proxy**: Sluice's REST app is the only door. It calls replicas through deployment
  handles (one Ray call), so Serve's proxy, its port and its routes are not started.
* **Resources** come from the manifest's `realtime` hints (`ServingHints`) and the steps' GPU
  needs; `serving_plan` turns them into replica counts, autoscaling, CPUs and GPUs for this cluster.

All functions here block on Ray (the Serve API is synchronous): async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from engine.ingest.worker import PluginSpec

DEPLOYMENT = "plugin"
"""The one deployment inside each application."""


def app_name(namespace: str, plugin_name: str, version: str) -> str:
    return f"sluice.{namespace}.{plugin_name}.{version}"


@dataclass(frozen=True)
class ServingPlan:
    """How a plugin version's replicas run on this cluster."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GpuUnavailable(RuntimeError):
    """The plugin needs GPUs, the cluster has none, and CPU fallback is not allowed."""


def serving_plan(hints: dict[str, Any] | None, *, step_gpus: float, cluster_gpus: float, require_gpu: bool) -> ServingPlan:
    """The replicas' shape from the manifest's `realtime` hints (already validated at register
    time) and what the steps ask for. GPUs: the hint's `num_gpus`, else a step's; on a cluster
    without GPUs the replicas run on CPU with a warning, unless `require_gpu` is set.

    CPUs default to 0 (replicas share the CPUs with batch jobs): a replica that reserves a CPU it
    uses only while a query is in flight would keep an ingest job's actors from being placed on a
    small machine. A hint's `num_cpus` reserves them (set it on clusters that autoscale)."""
    hints = dict(hints or {})
    gpus = float(hints.get("num_gpus", step_gpus) or 0.0)
    warning = None
    if gpus and cluster_gpus < gpus:
        if require_gpu:
            raise GpuUnavailable(f"the realtime replicas need {gpus:g} GPUs, cluster has {cluster_gpus:g} (SLUICE_REQUIRE_GPU is set)")
        warning = f"the realtime replicas want {gpus:g} GPUs and the cluster has {cluster_gpus:g}: running on CPU"
        gpus = 0.0
    min_replicas = int(hints.get("min_replicas", 1))
    max_replicas = int(hints.get("max_replicas", max(min_replicas, 1)))
    return ServingPlan(
        min_replicas=min_replicas, max_replicas=max_replicas,
        target_ongoing_requests=float(hints.get("target_ongoing_requests", 8.0)),
        max_ongoing_requests=int(hints.get("max_ongoing_requests", 64)),
        num_cpus=float(hints.get("num_cpus", 0.0)), num_gpus=gpus,
        max_batch_size=int(hints.get("max_batch_size", 32)),
        batch_wait_timeout_s=float(hints.get("batch_wait_timeout_ms", 0.0)) / 1000.0,
        warning=warning,
    )


def deployment_options(plan: ServingPlan) -> dict[str, Any]:
    """`serve.deployment(...).options(...)` for the plan: fixed replicas, or autoscaling between
    min and max on ongoing requests per replica."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": plan.num_cpus, **({"num_gpus": plan.num_gpus} if plan.num_gpus else {})},
        "max_ongoing_requests": plan.max_ongoing_requests,
        "max_constructor_retry_count": 2,
        "health_check_period_s": 10.0,
        "graceful_shutdown_timeout_s": 5.0,
    }
    if plan.max_replicas > plan.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": plan.min_replicas, "initial_replicas": max(plan.min_replicas, 1),
            "max_replicas": plan.max_replicas, "target_ongoing_requests": plan.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = plan.min_replicas
    return options


@dataclass(frozen=True)
class AppState:
    """An application's state as Serve reports it: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY,
    DELETING or NOT_STARTED; `message` carries the replicas' errors."""

    status: str
    message: str = ""
    replicas: int = 0


_start_lock = threading.Lock()
_deploy_lock = threading.Lock()
"""Serve's deploy path is not thread-safe (two applications built and submitted at once can fail
to pickle Serve's own modules), and functions handle messages concurrently: one at a time here.
`serve._run(..., _blocking=False)` returns at once, so this serialises only the submission."""
_started_for: str | None = None
_handles: dict[str, Any] = {}


def ensure_serve() -> None:
    """Start Serve on the connected Ray cluster (once per Ray connection), without its HTTP proxy.
    A process that shut Ray down and connected again (a new job id) starts Serve again."""
    global _started_for
    import ray

    job = ray.get_runtime_context().get_job_id()
    with _start_lock:
        if _started_for == job:
            return
        from ray import serve

        _handles.clear()
        serve.start(proxy_location="Disabled")
        _started_for = job


def deploy(name: str, spec: PluginSpec, plan: ServingPlan) -> None:
    """Create or update application `name` and return at once; `state(name)` follows it."""
    from ray import serve

    from engine.realtime.service import PluginService

    ensure_serve()
    with _deploy_lock:
        # ray annotates serve.deployment as returning a decorator; given the class, it returns the Deployment
        app = serve.deployment(PluginService).options(**deployment_options(plan)).bind(  # type: ignore[attr-defined]
            spec, max_batch_size=plan.max_batch_size, batch_wait_timeout_s=plan.batch_wait_timeout_s)
        serve._run(app, name=name, route_prefix=None, _blocking=False)
        _handles.pop(name, None)


def state(name: str) -> AppState:
    from ray import serve
    from ray.serve.schema import ReplicaState

    ensure_serve()
    app = serve.status().applications.get(name)
    if app is None:
        return AppState("NOT_STARTED")
    messages = [app.message] if app.message else []
    replicas = 0
    for deployment in app.deployments.values():
        if deployment.message:
            messages.append(deployment.message)
        replicas += int((deployment.replica_states or {}).get(ReplicaState.RUNNING, 0))
    return AppState(str(getattr(app.status, "value", app.status)), "\n".join(messages), replicas)


def running_apps(prefix: str = "sluice.") -> dict[str, str]:
    """{application name: status} of Sluice's applications on this cluster."""
    from ray import serve

    ensure_serve()
    return {name: str(getattr(app.status, "value", app.status))
            for name, app in serve.status().applications.items() if name.startswith(prefix)}


def delete(name: str) -> None:
    """Remove application `name` (its replicas stop); nothing happens if there is none."""
    from ray import serve

    ensure_serve()
    _handles.pop(name, None)
    if name in serve.status().applications:
        serve.delete(name, _blocking=True)


def delete_all(prefix: str = "sluice.") -> list[str]:
    """Remove every Sluice application on this cluster (tests, `sluice` admin clean-up)."""
    names = list(running_apps(prefix))
    for name in names:
        delete(name)
    return names


def handle(name: str) -> Any:
    """The application's deployment handle, cached per process."""
    cached = _handles.get(name)
    if cached is None:
        from ray import serve

        cached = _handles[name] = serve.get_app_handle(name)
    return cached


def forget_handle(name: str) -> None:
    _handles.pop(name, None)


__all__ = [
    "AppState", "DEPLOYMENT", "GpuUnavailable", "delete_all", "ServingPlan", "app_name", "delete", "deploy", "deployment_options",
    "ensure_serve", "forget_handle", "handle", "running_apps", "serving_plan", "state",
]
