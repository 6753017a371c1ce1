"""One contract for every ServeControl adapter: the scripted in-memory fake of unit tests, and Ray
Serve on the session's local Ray (a real replica of the `hash_realtime` test plugin, its archive
fetched by `file://` URL as replicas fetch registered archives).

Each test names its applications under a prefix of its own and removes them at the end, so tests
never see each other's applications. The memory cases are also marked `unit` (no Ray):
`pytest -m unit` on this file runs exactly those. The memory-only tests at the end cover what only
the fake has: its scripted outcomes and the calls it records.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.ingest.worker import PluginSpec
from engine.realtime.control import AppState, app_name, serving_plan
from engine.sandbox.client import SandboxOptions
from infra.serving import MemoryServeControl, RayServeControl, ServeControl
from tests.fixtures.plugins import PLUGINS, zip_folder

pytestmark = pytest.mark.integration

HASH_REALTIME = PLUGINS / "fixtures" / "hash_realtime"
DEPLOY_TIMEOUT_S = 180.0
SETTLED = ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY")


@dataclass(frozen=True)
class Names:
    """Application names of one test: `inside` share the test's own `sluice.` prefix, `outside`
    does not start with `sluice.` at all."""

    namespace: str

    @property
    def prefix(self) -> str:
        return f"sluice.{self.namespace}."

    def inside(self, plugin: str = "hash_realtime") -> str:
        return app_name(self.namespace, plugin, "1.0.0")

    def outside(self) -> str:
        return f"elsewhere.{self.namespace}.hash_realtime.1.0.0"


@pytest.fixture
def names() -> Names:
    return Names(f"contract-{uuid.uuid4().hex[:10]}")


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit), pytest.param("ray", marks=pytest.mark.ray)])
async def serve(request: pytest.FixtureRequest, names: Names) -> AsyncIterator[ServeControl]:
    if request.param == "memory":
        control: ServeControl = MemoryServeControl()
    else:
        request.getfixturevalue("ray_cluster")
        control = RayServeControl()
    yield control
    for prefix in (names.prefix, f"elsewhere.{names.namespace}."):
        await control.delete_all(prefix)


@pytest.fixture
def spec(tmp_path: Path, names: Names) -> PluginSpec:
    """The `hash_realtime` test plugin, as the deploy function describes a registered version."""
    data = zip_folder(HASH_REALTIME, top="hash_realtime")
    archive = tmp_path / "hash_realtime.zip"
    archive.write_bytes(data)
    return PluginSpec(
        plugin_id=f"plg_{names.namespace}", namespace=names.namespace, name="hash_realtime", version="1.0.0",
        sha256=hashlib.sha256(data).hexdigest(), archive=archive.as_uri(), input_fields=("text",),
        features=(("hash_embedding", 32),), sandbox=SandboxOptions(cache_root=str(tmp_path / "sandbox")).as_dict(),
    )


PLAN = serving_plan(None, step_gpus=0, cluster_gpus=0, require_gpu=False)


async def settled(serve: ServeControl, name: str, *, timeout_s: float = DEPLOY_TIMEOUT_S) -> AppState:
    """The application's state once it is RUNNING or failed (or when the timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while (state := await serve.state(name)).status not in SETTLED and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return state


# -- the contract ----------------------------------------------------------------------------------


async def test_available_is_true_where_serve_can_be_reached(serve: ServeControl) -> None:
    assert await serve.available() is True


async def test_the_state_of_an_unknown_application_is_not_started(serve: ServeControl, names: Names) -> None:
    assert await serve.state(names.inside()) == AppState("NOT_STARTED")


async def test_deleting_an_unknown_application_is_a_no_op(serve: ServeControl, names: Names) -> None:
    await serve.delete(names.inside())

    assert await serve.state(names.inside()) == AppState("NOT_STARTED")
    assert await serve.running_apps(names.prefix) == {}
    assert await serve.delete_all(names.prefix) == []


async def test_a_deployed_plugin_runs_is_listed_under_its_prefix_only_and_delete_removes_it(
    serve: ServeControl, names: Names, spec: PluginSpec
) -> None:
    name = names.inside()

    await serve.deploy(name, spec, PLAN)
    state = await settled(serve, name)

    assert state.status == "RUNNING", state.message
    assert state.replicas == 1
    assert await serve.running_apps(names.prefix) == {name: "RUNNING"}
    everything = await serve.running_apps()
    assert everything[name] == "RUNNING" and all(listed.startswith("sluice.") for listed in everything)
    assert await serve.running_apps(f"sluice.{names.namespace}-other.") == {}
    assert await serve.running_apps("elsewhere.") == {}

    await serve.delete(name)

    assert await serve.state(name) == AppState("NOT_STARTED")
    assert name not in await serve.running_apps()


async def test_running_apps_lists_only_names_with_the_prefix_and_delete_all_removes_just_those(
    serve: ServeControl, names: Names, spec: PluginSpec
) -> None:
    inside, outside = names.inside(), names.outside()
    await serve.deploy(inside, spec, PLAN)
    await serve.deploy(outside, spec, PLAN)

    assert set(await serve.running_apps(names.prefix)) == {inside}
    assert inside in await serve.running_apps() and outside not in await serve.running_apps()
    assert set(await serve.running_apps(f"elsewhere.{names.namespace}.")) == {outside}

    assert await serve.delete_all(names.prefix) == [inside]

    assert await serve.state(inside) == AppState("NOT_STARTED")
    assert (await serve.state(outside)).status != "NOT_STARTED"


# -- memory only: scripted outcomes and recorded calls ---------------------------------------------


@pytest.fixture
def memory() -> MemoryServeControl:
    return MemoryServeControl()


@pytest.mark.unit
async def test_memory_a_deploy_is_deploying_until_the_next_state_call_and_is_recorded(
    memory: MemoryServeControl, names: Names, spec: PluginSpec
) -> None:
    name = names.inside()
    await memory.deploy(name, spec, PLAN)

    assert await memory.running_apps(names.prefix) == {name: "DEPLOYING"}
    assert await memory.state(name) == AppState("RUNNING", replicas=1)
    assert await memory.running_apps(names.prefix) == {name: "RUNNING"}
    assert [(call.name, call.spec, call.plan) for call in memory.deploys] == [(name, spec, PLAN)]
    assert memory.deployed(name) == memory.deploys[0] and memory.deployed(names.outside()) is None


@pytest.mark.unit
async def test_memory_a_failed_app_reports_its_message_and_a_hung_one_stays_deploying(
    memory: MemoryServeControl, names: Names, spec: PluginSpec
) -> None:
    failing, hanging = names.inside("failing"), names.inside("hanging")
    memory.fail(failing, "RuntimeError: model weights are missing")
    memory.hang(hanging)
    await memory.deploy(failing, spec, PLAN)
    await memory.deploy(hanging, spec, PLAN)

    assert await memory.state(failing) == AppState("DEPLOY_FAILED", "RuntimeError: model weights are missing")
    for _ in range(3):
        assert await memory.state(hanging) == AppState("DEPLOYING")

    memory.succeed(hanging)
    assert (await memory.state(hanging)).status == "RUNNING"
    await memory.delete(failing)
    await memory.delete(failing)
    assert memory.deleted == [failing]


@pytest.mark.unit
async def test_memory_available_follows_reachable() -> None:
    assert await MemoryServeControl(reachable=False).available() is False
