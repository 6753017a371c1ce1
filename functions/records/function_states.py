"""What each runner says about its functions (kind `function_states`, key `{owner}/{function}`).

A runner (functions/runtime/runner.py) writes one record per function on every state change and
on a heartbeat (`heartbeat_s`, 10 s by default), so a process that does not run the functions (the
REST app apart from them) can show them. A record not refreshed within `STALE_HEARTBEATS`
heartbeats is *stale*: its process is gone or stuck. Records untouched for `FORGET_AFTER_S` are
dropped by the next runner that starts.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from infra.catalog.base import Catalog

FUNCTION_STATES = "function_states"
STALE_HEARTBEATS = 3
FORGET_AFTER_S = 24 * 3600.0


class FunctionStatus(StrEnum):
    """starting (subscribing) → running → restarting (its loop failed; waiting to start again) → ...
    → stopped (the runner stopped)."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


def state_key(owner: str, function: str) -> str:
    return f"{owner}/{function}"


def is_stale(record: dict[str, Any], now: float) -> bool:
    """A record of a live state its runner stopped refreshing."""
    if record.get("state") == FunctionStatus.STOPPED:
        return False
    heartbeat_s = float(record.get("heartbeat_s") or 10.0)
    return now - float(record.get("updated_at") or 0.0) > STALE_HEARTBEATS * heartbeat_s


class FunctionStates:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def put(self, owner: str, function: str, record: dict[str, Any]) -> None:
        await self.catalog.upsert(FUNCTION_STATES, state_key(owner, function), {**record, "owner": owner, "function": function})

    async def forget_old(self, now: float | None = None) -> int:
        """Drop records untouched for `FORGET_AFTER_S` (runners long gone)."""
        cutoff = (now if now is not None else time.time()) - FORGET_AFTER_S
        return await self.catalog.delete_many(FUNCTION_STATES, {"updated_at": {"$lt": cutoff}})

    async def summary(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per function, across the runners that run it: the worst live state (`restarting` over
        `starting` over `running`) and the restarts and last error of those runners. When no runner
        refreshes it any more, its latest record, `stale` unless it says `stopped`."""
        now = now if now is not None else time.time()
        by_function: dict[str, list[dict[str, Any]]] = {}
        for record in await self.catalog.find(FUNCTION_STATES):
            by_function.setdefault(str(record.get("function")), []).append(record)
        out: dict[str, dict[str, Any]] = {}
        for function, records in sorted(by_function.items()):
            live = [r for r in records if r.get("state") != FunctionStatus.STOPPED and not is_stale(r, now)]
            shown = live or [max(records, key=lambda r: float(r.get("updated_at") or 0.0))]
            states = {r.get("state") for r in shown}
            state = next((s for s in (FunctionStatus.RESTARTING, FunctionStatus.STARTING, FunctionStatus.RUNNING) if s in states),
                         shown[0].get("state"))
            errors = [r for r in shown if r.get("last_error_at")]
            last = max(errors, key=lambda r: float(r["last_error_at"])) if errors else {}
            updated = max(float(r.get("updated_at") or 0.0) for r in shown)
            out[function] = {
                "state": str(state), "stale": not live and is_stale(shown[0], now),
                "restarts": sum(int(r.get("restarts") or 0) for r in shown),
                "last_error": last.get("last_error"), "last_error_at": last.get("last_error_at"),
                "updated_at": updated, "age_s": round(now - updated, 3), "runners": len(live),
            }
        return out

    @staticmethod
    def degraded(summary: dict[str, dict[str, Any]]) -> list[str]:
        """The functions that make the platform's health `degraded`: restarting or stale."""
        return [name for name, s in summary.items() if s["stale"] or s["state"] == FunctionStatus.RESTARTING]


__all__ = ["FUNCTION_STATES", "FunctionStates", "FunctionStatus", "STALE_HEARTBEATS", "is_stale", "state_key"]
