"""Ray Serve, as the deploy function and the retriever use it: one application per plugin version.

* **Names**: `sluice.{namespace}.{plugin_name}.{version}`. The namespace is part of the name, so two
  tenants' plugins of the same name never share (or replace) an application, and a version never
  replaces another: a collection's queries go to the version that built its index.
* **No HTTP proxy**: Sluice's REST app is the only door. It calls replicas through deployment
  handles (one Ray call), so Serve's proxy, its port and its routes are not started.
* **Resources** come from the manifest's `realtime` hints (`ServingHints`) and the steps' GPU
  needs; `serving_plan` turns them into replica counts, autoscaling, CPUs and GPUs for this cluster.

All functions here block on Ray (the Serve API is synchronous): async callers use `asyncio.to_thread`,
except `handle` once `has_handle` says it is cached: it is then called on the caller's loop, whose
requests it routes (see `handle`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
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
        # no access-log line per request in the replica (a file write, and a line to the driver, for each query)
        "logging_config": {"enable_access_log": False},
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
_handles_lock = threading.Lock()
_loop_handles: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = weakref.WeakKeyDictionary()
"""Per event loop: {application name: a handle whose router runs on that loop} (see `handle`)."""
_ROUTER_ON_CALLER_LOOP = os.environ.get("SLUICE_SERVE_ROUTER_LOOP", "caller") != "separate"
_GRPC = os.environ.get("SLUICE_SERVE_TRANSPORT", "grpc") != "ray"
"""Requests of caller-loop handles go to the replica over Serve's inter-deployment gRPC channel
(`_by_reference=False`; every replica serves it) rather than as Ray actor calls: about half the
round trip (measured on a busy 2-CPU machine: ~1.5 ms instead of ~3.7 ms for an empty call, and
~2.1 instead of ~4.2 ms for an embed). `SLUICE_SERVE_TRANSPORT=ray` goes back to actor calls."""


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

        with _handles_lock:
            _handles.clear()
            _loop_handles.clear()
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
        forget_handle(name)


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
    forget_handle(name)
    if name in serve.status().applications:
        serve.delete(name, _blocking=True)


def delete_all(prefix: str = "sluice.") -> list[str]:
    """Remove every Sluice application on this cluster (tests, `sluice` admin clean-up)."""
    names = list(running_apps(prefix))
    for name in names:
        delete(name)
    return names


def handle(name: str) -> Any:
    """The application's deployment handle, cached per process and per event loop.

    Called on a running event loop (the REST app's), the handle's router runs on that loop
    (`_run_router_in_separate_loop=False`): a query's request and its answer then stay on the
    caller's loop, instead of hopping to Serve's router thread and back (two thread switches,
    and one more thread contending for the GIL, per query); its requests go over gRPC (`_GRPC`).
    Serve's current-loop router is not thread-safe, so each loop gets its own handle (kept by a
    weak map; Serve itself keeps one long-poll client per loop, so a process should have few loops:
    the server has one).
    Off a loop (or with `SLUICE_SERVE_ROUTER_LOOP=separate`) it is Serve's default handle, whose
    router runs on Serve's own thread. The first call per application asks the controller for
    its ingress deployment (one blocking round trip, `serve.get_app_handle`)."""
    cached = _handles.get(name)
    if cached is None:
        from ray import serve

        cached = _handles[name] = serve.get_app_handle(name)
    loop = _running_loop()
    if loop is None or not _ROUTER_ON_CALLER_LOOP:
        return cached
    per_loop = _loop_handles.get(loop)
    local = per_loop.get(name) if per_loop is not None else None
    if local is None:
        from ray.serve.handle import DeploymentHandle

        local = DeploymentHandle(cached.deployment_name, cached.app_name)
        local._init(_run_router_in_separate_loop=False)
        if _GRPC:
            local = local.options(_by_reference=False)
        with _handles_lock:
            _loop_handles.setdefault(loop, {})[name] = local
    return local


def has_handle(name: str) -> bool:
    """Whether `handle(name)` is cached (it returns at once, without asking the controller)."""
    return name in _handles


def forget_handle(name: str) -> None:
    """Drop the application's handles (every loop's): it was deleted, replaced or unreachable."""
    with _handles_lock:
        _handles.pop(name, None)
        for per_loop in list(_loop_handles.values()):
            per_loop.pop(name, None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = [
    "AppState", "DEPLOYMENT", "GpuUnavailable", "delete_all", "ServingPlan", "app_name", "delete", "deploy", "deployment_options",
    "ensure_serve", "forget_handle", "handle", "has_handle", "running_apps", "serving_plan", "state",
]
