"""The explicit life every adapter has: `connect()`, `close()`, `async with`, `health()`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from events.errors import NotConnected


class Health(BaseModel):
    """One port's state as reported by `GET /v1/health`."""

    status: Literal["ok", "degraded", "down"] = Field(description="Overall state of the adapter.")
    adapter: str = Field(description="Which adapter serves the port.", examples=["sqlite", "kafka"])
    detail: dict[str, Any] = Field(default_factory=dict, description="Adapter-specific facts.")


class Lifecycle:
    """Mixin: tracks connection state and gives a clear error when used too early."""

    adapter_name: str = "adapter"
    _connected: bool = False

    async def connect(self) -> None:
        await self._connect()
        self._connected = True

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._close()

    async def _connect(self) -> None:  # pragma: no cover - trivial default
        return None

    async def _close(self) -> None:  # pragma: no cover - trivial default
        return None

    def _require_connected(self) -> None:
        if not self._connected:
            raise NotConnected(type(self).__name__)

    @property
    def connected(self) -> bool:
        return self._connected

    async def health(self) -> Health:
        if not self._connected:
            return Health(status="down", adapter=self.adapter_name, detail={"reason": "not connected"})
        return await self._health()

    async def _health(self) -> Health:
        return Health(status="ok", adapter=self.adapter_name)

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
