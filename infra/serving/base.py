"""The ServeControl port: the Ray Serve applications that serve plugin versions in realtime.

One application per plugin version (`engine.realtime.control.app_name`). `deploy` returns at once;
callers follow the application with `state` until it is RUNNING, or DEPLOY_FAILED / UNHEALTHY
(with Serve's message). The adapters are `RayServeControl` (a real cluster) and
`MemoryServeControl` (a scripted fake for unit tests); one contract suite checks both.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.ingest.worker import PluginSpec
    from engine.realtime.control import AppState, ServingPlan

PREFIX = "sluice."
"""Every Sluice application's name starts with this."""


class ServeControl(abc.ABC):
    """Create, follow and remove Serve applications by name."""

    @abc.abstractmethod
    async def available(self) -> bool:
        """Whether Serve can be reached now (Ray is connected in this process)."""

    @abc.abstractmethod
    async def deploy(self, name: str, spec: PluginSpec, plan: ServingPlan) -> None:
        """Create or update application `name` and return at once; `state(name)` follows it."""

    @abc.abstractmethod
    async def state(self, name: str) -> AppState:
        """The application's state; `NOT_STARTED` when there is none."""

    @abc.abstractmethod
    async def running_apps(self, prefix: str = PREFIX) -> dict[str, str]:
        """{application name: status} of the applications whose name starts with `prefix`."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Remove application `name` (its replicas stop); nothing happens if there is none."""

    async def delete_all(self, prefix: str = PREFIX) -> list[str]:
        """Remove every application whose name starts with `prefix`; returns their names."""
        names = list(await self.running_apps(prefix))
        for name in names:
            await self.delete(name)
        return names
