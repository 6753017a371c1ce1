"""`RayServeControl`: the ServeControl port on the Ray cluster this process is connected to.

A thin async wrapper over `engine.realtime.control`, whose Serve calls block: each runs in a
worker thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import sys

from engine.ingest.worker import PluginSpec
from engine.realtime import control
from engine.realtime.control import AppState, ServingPlan
from infra.serving.base import PREFIX, ServeControl


class RayServeControl(ServeControl):
    async def available(self) -> bool:
        ray = sys.modules.get("ray")  # never imported: certainly not connected (and no import cost)
        return ray is not None and ray.is_initialized()

    async def deploy(self, name: str, spec: PluginSpec, plan: ServingPlan) -> None:
        await asyncio.to_thread(control.deploy, name, spec, plan)

    async def state(self, name: str) -> AppState:
        return await asyncio.to_thread(control.state, name)

    async def running_apps(self, prefix: str = PREFIX) -> dict[str, str]:
        return await asyncio.to_thread(control.running_apps, prefix)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(control.delete, name)

    async def delete_all(self, prefix: str = PREFIX) -> list[str]:
        return await asyncio.to_thread(control.delete_all, prefix)
