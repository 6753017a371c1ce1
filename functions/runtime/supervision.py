"""Supervision of the runner's functions: how a failed consumer loop is started again, and the
state of each function, kept where others can see it.

- `RestartPolicy`: a function whose loop fails (a fetch or commit error that is not transient, a
  subscribe that fails, a bug) is subscribed again after an exponential backoff with jitter, capped
  at `max_delay_s`; a loop that ran `healthy_after_s` before failing starts the backoff over.
- `StateBook`: per function `starting|running|restarting|stopped`, restarts, last error and when.
  Held in memory (`Runner.states()`), mirrored in the metrics (`infra/metrics.py`) and written to
  the catalog (functions/records/function_states.py) on every change and every `heartbeat_s`, by
  one task, so a slow or unreachable catalog never holds up a consumer loop: a write that fails is
  logged and made again at the next change or heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from functions.records.function_states import FunctionStates, FunctionStatus
from infra import metrics
from infra.catalog.base import Catalog

log = structlog.get_logger("sluice.runner")

ERROR_MAX_CHARS = 2000


def backoff(attempt: int, *, base_s: float, max_s: float) -> float:
    """Wait before the `attempt`-th retry (1-based): doubling from `base_s`, capped at `max_s`,
    jittered to 50-100 %. The one backoff of the runner, the supervisor and the ingest scheduler."""
    return min(max_s, base_s * 2 ** min(attempt - 1, 32)) * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class RestartPolicy:
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    healthy_after_s: float = 60.0
    """A loop that ran this long before failing counts as healthy: its backoff starts over."""

    def delay(self, failures: int) -> float:
        """Wait before the `failures`-th consecutive restart: doubling, capped, jittered (50–100 %)."""
        return backoff(failures, base_s=self.base_delay_s, max_s=self.max_delay_s)


@dataclass
class FunctionState:
    name: str
    state: FunctionStatus = FunctionStatus.STARTING
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    since: float = 0.0
    """When the function entered its state (epoch seconds)."""

    def as_dict(self) -> dict[str, Any]:
        return {"state": str(self.state), "restarts": self.restarts, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "since": self.since}


class StateBook:
    """The states of one runner's functions; see the module docstring."""

    def __init__(self, names: Sequence[str], *, owner: str, catalog: Catalog | None, heartbeat_s: float = 10.0) -> None:
        now = time.time()
        self.owner = owner
        self.heartbeat_s = heartbeat_s
        self._states = {name: FunctionState(name, since=now) for name in names}
        self._repo = FunctionStates(catalog) if catalog is not None else None
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: state.as_dict() for name, state in self._states.items()}

    def set(self, name: str, state: FunctionStatus) -> None:
        current = self._states[name]
        if current.state != state:
            current.state, current.since = state, time.time()
            self._changed.set()
        metrics.function_up(name, state == FunctionStatus.RUNNING)

    def failed(self, name: str, error: BaseException) -> None:
        """The function's loop failed: `restarting`, one restart more, the error kept."""
        current = self._states[name]
        current.restarts += 1
        current.last_error = f"{type(error).__name__}: {error}"[:ERROR_MAX_CHARS]
        current.last_error_at = time.time()
        metrics.function_restarted(name)
        self.set(name, FunctionStatus.RESTARTING)
        self._changed.set()

    # --- persistence ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._repo is not None and (self._task is None or self._task.done()):
            self._stop.clear()
            self._task = asyncio.create_task(self._heartbeats(), name="sluice-function-states")

    async def close(self) -> None:
        """Write the last states (stopped) once more, then end the heartbeats."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=5)
            self._task = None

    async def _heartbeats(self) -> None:
        assert self._repo is not None
        with contextlib.suppress(Exception):
            await self._repo.forget_old()
        while True:
            self._changed.clear()
            await self._write()
            if self._stop.is_set():
                return
            waits = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(self._stop.wait())]
            try:
                await asyncio.wait(waits, timeout=self.heartbeat_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def _write(self) -> None:
        assert self._repo is not None
        now = time.time()
        for state in list(self._states.values()):
            try:
                await self._repo.put(self.owner, state.name, {**state.as_dict(), "updated_at": now,
                                                              "heartbeat_s": self.heartbeat_s})
            except Exception as exc:  # noqa: BLE001 - written again at the next change or heartbeat
                log.warning("function.state_write_failed", function=state.name, error=f"{type(exc).__name__}: {exc}")
                return


__all__ = ["FunctionState", "RestartPolicy", "StateBook"]
