"""The ServeControl port (Ray Serve applications of plugin versions) and its adapters: Ray, and the
scripted in-memory fake of unit tests. They load on first use: importing the port imports neither
Ray nor the engine's plugin runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra._lazy import lazy_exports
from infra.serving.base import PREFIX, ServeControl

if TYPE_CHECKING:
    from infra.serving.memory import DeployCall, MemoryServeControl
    from infra.serving.ray import RayServeControl

__all__ = ["PREFIX", "DeployCall", "MemoryServeControl", "RayServeControl", "ServeControl"]

__getattr__ = lazy_exports(__name__, {
    "DeployCall": "infra.serving.memory",
    "MemoryServeControl": "infra.serving.memory",
    "RayServeControl": "infra.serving.ray",
})
