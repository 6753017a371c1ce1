"""The query path's per-process pieces without Ray: deployment handles cached per application
and per event loop (their router on the caller's loop), dropped on forget; the retriever's JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import types

import numpy as np
import pytest
from starlette.responses import JSONResponse

from engine.realtime import control
from functions.rest.retrievers import json_response

pytestmark = pytest.mark.unit


class FakeHandle:
    made: list[FakeHandle] = []

    def __init__(self, deployment_name: str, app_name: str) -> None:
        self.deployment_name, self.app_name = deployment_name, app_name
        self.init_kwargs: dict | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        FakeHandle.made.append(self)

    def _init(self, **kwargs) -> None:
        assert self.init_kwargs is None, "a handle is initialised once"
        self.init_kwargs = kwargs
        self.loop = asyncio.get_running_loop()

    def options(self, **kwargs) -> FakeHandle:
        """A copy with request options (Serve's copies share the router)."""
        copy = object.__new__(FakeHandle)
        copy.__dict__.update(self.__dict__, options=kwargs)
        return copy


@pytest.fixture
def fake_serve(monkeypatch):
    """`ray.serve` as control.handle uses it: get_app_handle (a controller round trip) and DeploymentHandle."""
    lookups: list[str] = []

    def get_app_handle(name: str) -> FakeHandle:
        lookups.append(name)
        return FakeHandle("plugin", name)

    serve = types.SimpleNamespace(get_app_handle=get_app_handle)
    ray = types.ModuleType("ray")
    ray.serve = serve
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.serve", serve)
    monkeypatch.setitem(sys.modules, "ray.serve.handle", types.SimpleNamespace(DeploymentHandle=FakeHandle))
    monkeypatch.setattr(control, "_handles", {})
    monkeypatch.setattr(control, "_loop_handles", type(control._loop_handles)())
    monkeypatch.setattr(control, "_ROUTER_ON_CALLER_LOOP", True)
    monkeypatch.setattr(control, "_GRPC", True)
    FakeHandle.made = []
    return lookups


def test_a_handle_on_a_loop_routes_on_that_loop_and_is_reused_there(fake_serve):
    async def twice() -> tuple[FakeHandle, FakeHandle, asyncio.AbstractEventLoop]:
        return control.handle("sluice.a.p.1"), control.handle("sluice.a.p.1"), asyncio.get_running_loop()

    first, again, loop = asyncio.run(twice())
    assert first is again and first.app_name == "sluice.a.p.1" and first.deployment_name == "plugin"
    assert first.init_kwargs == {"_run_router_in_separate_loop": False} and first.loop is loop
    assert first.options == {"_by_reference": False}  # requests over Serve's gRPC channel, not actor calls
    other, _, other_loop = asyncio.run(twice())  # another loop: its own handle (the router is not thread-safe)
    assert other is not first and other.loop is other_loop
    assert fake_serve == ["sluice.a.p.1"]  # the controller is asked once per application, not per loop


def test_off_a_loop_it_is_serves_default_handle(fake_serve):
    assert not control.has_handle("sluice.a.p.1")
    plain = control.handle("sluice.a.p.1")  # retrieve calls it in a worker thread first: the controller call blocks
    assert control.has_handle("sluice.a.p.1")
    assert plain.init_kwargs is None and control.handle("sluice.a.p.1") is plain


def test_forget_drops_every_loops_handle(fake_serve):
    async def get() -> FakeHandle:
        return control.handle("sluice.a.p.1")

    async def scenario() -> None:
        first = await get()
        control.forget_handle("sluice.a.p.1")  # deleted, redeployed or unreachable
        assert await get() is not first

    asyncio.run(scenario())
    assert fake_serve == ["sluice.a.p.1", "sluice.a.p.1"]


def test_ray_transport_setting_keeps_actor_calls(fake_serve, monkeypatch):
    monkeypatch.setattr(control, "_GRPC", False)

    async def get() -> FakeHandle:
        return control.handle("sluice.a.p.1")

    local = asyncio.run(get())
    assert local.init_kwargs == {"_run_router_in_separate_loop": False}
    assert "options" not in vars(local)


def test_separate_router_setting_keeps_serves_default(fake_serve, monkeypatch):
    monkeypatch.setattr(control, "_ROUTER_ON_CALLER_LOOP", False)

    async def get() -> FakeHandle:
        return control.handle("sluice.a.p.1")

    assert asyncio.run(get()).init_kwargs is None


def test_access_log_is_off_in_replicas():
    plan = control.serving_plan(None, step_gpus=0, cluster_gpus=0, require_gpu=False)
    assert control.deployment_options(plan)["logging_config"] == {"enable_access_log": False}


def test_retriever_json_is_the_same_json_as_starlettes():
    found = {"collection_id": "col_1", "results": [
        {"rank": 1, "score": 0.8731, "text": "naïve — ünïcode \"quoted\"\n", "fields": {"n": 3, "ok": True, "none": None},
         "source": {"bucket": "b", "key": "k/ä.txt"}, "feature_uris": ["sluice://p@1.0.0/f"]}],
        "timings": {"embed_ms": 1.5, "total_ms": 2.25}}
    fast, slow = json_response(found), JSONResponse(found)
    assert json.loads(fast.body) == json.loads(slow.body) == found
    assert fast.media_type == "application/json"
    assert b'": ' not in fast.body and b'", ' not in fast.body  # compact, like JSONResponse


def test_retriever_json_writes_numpy_values_as_plain_numbers():
    pytest.importorskip("orjson")
    body = json_response({"score": np.float32(0.5), "vector": np.arange(3, dtype=np.float32), "n": np.int64(7)}).body
    assert json.loads(body) == {"score": 0.5, "vector": [0.0, 1.0, 2.0], "n": 7}
