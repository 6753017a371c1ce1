"""Everything a process that runs functions starts, in one place: `sluice up`, the test fixtures
and the benches all call `run_functions` (or `functions_running` around it).

- the runner, subscribing every row of the handler table (`functions/table.py`);
- the ingest scheduler, once the models the catalog says are deployed are back (a local Ray takes
  them with it when the last process stops: a job started earlier would fail with "not deployed");
- the deploy reconciler: versions that should be serving but whose Serve applications are gone;
- the drop folder, when given one;
- the upload sweeper (functions/runtime/sweeper.py): objects of uploads never confirmed before
  their URL expired, every `settings.upload_sweep_interval_s`;
- the bus janitor (functions/runtime/janitor.py): retention of consumed log entries on the SQLite
  and in-memory buses, every `settings.bus_prune_interval_s`.

The outbox relay is not started here: every connected `Platform` runs one (infra/outbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from engine.sandbox.spare import SPARE_HOSTS
from functions.runtime.dropfolder import DropFolder
from functions.runtime.idempotency import IdempotencyStore
from functions.runtime.janitor import BusJanitor
from functions.runtime.runner import Function, Runner
from functions.runtime.scheduler import IngestScheduler
from functions.runtime.sweeper import UploadSweeper
from infra.bootstrap import Platform

log = structlog.get_logger("sluice.functions")


@dataclass(frozen=True)
class Running:
    """What `run_functions` started, for callers that look inside (tests, benches)."""

    runner: Runner
    scheduler: IngestScheduler


async def _schedule_after_models(platform: Platform, scheduler: IngestScheduler, stop: asyncio.Event) -> None:
    from functions.services.model_deploy import reconcile_models

    try:
        await reconcile_models(platform.catalog, platform.store, platform.settings, platform.compute, platform.publish)
    except Exception:  # noqa: BLE001 - ingest must still start; each model's record says what failed
        structlog.get_logger("sluice.models").exception("model.reconcile_failed")
    await scheduler.run(stop)


async def run_functions(
    platform: Platform, stop: asyncio.Event, *, functions: list[Function] | None = None, drop_folder: Path | None = None,
    reconcile: bool = True, started: Callable[[Running], None] | None = None,
) -> None:
    """Run until `stop` is set, then stop everything it started (uncommitted messages are
    redelivered to the next process). `started` is called once the consumers are subscribed."""
    from functions.services.deploy import reconcile as reconcile_deployments
    from functions.table import FUNCTIONS

    scheduler = IngestScheduler.for_platform(platform)
    runner = Runner(
        bus=platform.bus, topics=platform.topics, functions=FUNCTIONS if functions is None else functions,
        deps={**platform.deps(), "ingest": scheduler}, idempotency=IdempotencyStore(platform.catalog),
    )
    tasks: list[asyncio.Task] = []
    await runner.start()
    try:
        if reconcile and getattr(platform.compute, "runs_jobs", False):
            await reconcile_deployments(platform.catalog, platform.serve, platform.publish)
        tasks.append(asyncio.create_task(_schedule_after_models(platform, scheduler, stop) if reconcile else scheduler.run(stop)))
        tasks.append(asyncio.create_task(UploadSweeper.for_platform(platform).run(stop)))
        tasks.append(asyncio.create_task(BusJanitor.for_platform(platform).run(stop)))
        if drop_folder is not None:
            tasks.append(asyncio.create_task(DropFolder.for_platform(platform, drop_folder).run(stop)))
        if started is not None:
            started(Running(runner, scheduler))
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.stop()
        SPARE_HOSTS.close()  # the register function's spare validation hosts


@contextlib.asynccontextmanager
async def functions_running(platform: Platform, **options) -> AsyncIterator[Running]:
    """`run_functions` in a task for the body of a `with`: yields once the consumers are up."""
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_functions(platform, stop, started=ready.set_result, **options))
    waiters: list[asyncio.Future[Any]] = [ready, task]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # failed to start: raise its error here
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


__all__ = ["Running", "functions_running", "run_functions"]
