"""The bus janitor: applies retention to a log bus, every `settings.bus_prune_interval_s`.

The embedded buses (`SqliteLogBus`, `InMemoryBus`) keep every message until something prunes them.
`run_functions` runs one `BusJanitor`; each pass calls `bus.prune(...)` (see `LogBus.prune` in
`infra/bus/_log.py`) with the platform's retention:

- a message goes only once every consumer group reading its partition has committed past it;
  a topic no group reads keeps everything (so the dead-letter topic keeps its letters until the
  function that records them has);
- of those, it goes when it is older than `SLUICE_BUS_RETENTION_S` (default 7 days), or when its
  partition holds more than `SLUICE_BUS_RETENTION_MAX_MESSAGES` (default 100 000), oldest first.

Buses without a `prune` method (Kafka, which has its broker's retention) are left alone. Several
processes on one SQLite file may each run a janitor: a prune is idempotent, and each batch of
deletes is its own short transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol, runtime_checkable

import structlog

from events.errors import TransientError

log = structlog.get_logger("sluice.janitor")


@runtime_checkable
class Prunable(Protocol):
    """A bus that keeps its own log, and prunes it on request."""

    async def prune(self, older_than_s: float, *, max_messages: int | None = None) -> int: ...


class BusJanitor:
    """One pass with `prune()`; `run(stop)` prunes at once, then every `interval_s`, until `stop` is set."""

    def __init__(
        self, bus: object, *, retention_s: float, max_messages: int | None, interval_s: float = 600.0
    ) -> None:
        self.bus, self.retention_s, self.max_messages, self.interval_s = bus, retention_s, max_messages, interval_s

    @classmethod
    def for_platform(cls, platform: Any) -> BusJanitor:
        settings = platform.settings
        return cls(platform.bus, retention_s=settings.bus_retention_s, max_messages=settings.bus_retention_max_messages,
                   interval_s=settings.bus_prune_interval_s)

    @property
    def applies(self) -> bool:
        """Whether this bus keeps a log this janitor prunes (not Kafka: its broker does)."""
        return isinstance(self.bus, Prunable)

    async def prune(self) -> int:
        """One pass; returns how many messages were deleted (0 for a bus it does not apply to)."""
        if not isinstance(self.bus, Prunable):
            return 0
        return await self.bus.prune(self.retention_s, max_messages=self.max_messages)

    async def run(self, stop: asyncio.Event) -> None:
        if not self.applies:
            log.debug("janitor.skipped", bus=type(self.bus).__name__)
            return
        while not stop.is_set():
            try:
                await self.prune()
            except TransientError as exc:  # a busy file: the next pass tries again
                log.warning("janitor.prune_failed", error=exc.message)
            except Exception:  # retention must never stop the process
                log.exception("janitor.prune_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)


__all__ = ["BusJanitor", "Prunable"]
