"""ingest: `ObjectCreated` → queued per matching collection → one Ray Data job per burst →
`IngestCompleted` / `IngestFailed` with the counts the stores acknowledged.

The handler only records: each object goes into the durable queue (kind `ingest_queue`) of every
collection whose bucket and prefix it matches, once per object version, and the handler returns
at once. The `IngestScheduler` (one per process that runs functions) turns a collection's queue
into a task, checks before anything runs, and runs the job in a thread: Ray Data runs the plugin in
workers and streams the output back here, where it is written in batches.

Coalescing: a collection's queue becomes a task, of its oldest `SLUICE_INGEST_MAX_OBJECTS` objects,
as soon as no job of the collection runs and one of these holds:
- the queue is quiet: nothing arrived for `SLUICE_INGEST_SETTLE_S` (0.25 s), so one object dropped
  into an idle collection starts at once, and a burst that has ended starts whole (objects
  uploaded one after another, each a round trip of tens of milliseconds, are one burst);
- its oldest object has waited `SLUICE_INGEST_MAX_DELAY_S` (2 s): a burst still arriving is cut;
- it holds `SLUICE_INGEST_MAX_OBJECTS` objects.
While a collection's job runs, what arrives for it waits and becomes its next task, so 10,000
objects dropped at once make a few large jobs, not thousands of small ones.

The scheduler's work per object does not grow with the queue: it reads the queue through the
indexes `functions/records/collection.py` declares (a walk over the collections with unclaimed
entries, a few one-row reads per collection, and the batch it claims), never the whole queue;
the reconciler walks the tasks that hold entries the same way.

Several jobs run at once (`SLUICE_INGEST_MAX_JOBS`), and tenants take turns: when a slot is free,
the namespace served least recently (one never served first) whose running jobs are under
`SLUICE_INGEST_MAX_JOBS_PER_NAMESPACE` gets it, for its collection with the oldest queued object;
so one namespace's backlog over many collections cannot keep another's single object waiting for
more than one of its jobs. Each task has a wall-clock limit (`SLUICE_INGEST_JOB_TIMEOUT_S`) from
its start to the end of its job: past it the Ray Data job is shut down (its actors, and with them
the plugin hosts, are killed), the task fails like any failed job and its slot is free.

Exactly what was written is reported, never more: `documents_written` counts records the catalog
acknowledged, `vectors_upserted` points the index acknowledged per vector name, and a job that
wrote nothing for non-empty input is `IngestFailed`, never "completed".

Durability: the task record (kind `tasks`, never expires) and its queue entries live in the
catalog; a task whose process died (its lease is not renewed) is run again by the next scheduler,
and because document and point ids derive from the collection, the object and its version, a
rerun overwrites what the first run wrote. A redelivered `ObjectCreated` for a version already
written is skipped. A new version of an object replaces the old version's documents and points.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import mimetypes
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from engine.ingest.inputs import INLINE_COLUMN
from engine.ingest.pool import WarmPools
from engine.ingest.worker import PluginSpec
from events.bus import EventBus
from events.envelope import AnyEnvelope, make
from events.errors import AlreadyExists, TransientError
from events.payloads import IngestCompleted, IngestFailed, IngestFailure, IngestProgress, IngestStarted, ObjectCreated
from events.publisher import Publish, Publisher
from events.topics import Topics
from functions.records.backfills import BACKFILLS
from functions.records.collection import COLLECTIONS, DOCUMENTS, INGEST_QUEUE, INGESTED, ingested_key
from functions.records.plugins import VERSIONS, now
from functions.records.status import TASK_FINISHED, BackfillStatus, TaskStatus
from functions.records.tasks import TASKS
from functions.runtime.supervision import backoff
from functions.runtime.task_writer import Source, TaskWriter
from functions.services.backfill import queue_backfill
from functions.services.ingest import IngestRefused, blob_type_for, document_id_for, object_id_for, plugin_spec
from functions.services.remove import complete_removals
from infra.catalog.base import Catalog, Delete, Insert, Update, WriteConflict, declare_index
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore
from infra.outbox import LEASES, owner_alive
from infra.settings import Settings
from infra.vectors.base import VectorIndex

log = structlog.get_logger("sluice.scheduler")

JOB_LEASES = "ingest_leases"
SWEEP_LEASE = "ingest-sweep"
SWEEP_PAGE = 500


LEASE_S = 60.0
"""A running task whose owner has not renewed its lease for this long is run again elsewhere."""
HEARTBEAT_S = 10.0
PROGRESS_EVERY_S = 1.0
SCAN_PAGE = 20_000
"""Most unfinished tasks the reconciler reads per run."""
UNCLAIM_PAGE = 1_000
"""Queue entries of a vanished task handed back to the queue per write."""
RESCAN_S = 2.0
"""The queue is read again at least this often (other processes' leases end, bursts become due);
sooner when this process queues objects or ends a job (`poke`), or when a queue becomes due."""
MIN_SCAN_S = 0.02
"""While objects keep arriving (each one pokes), the queue is looked at no more often than this."""

declare_index(TASKS, "status")  # the reconciler's unfinished tasks
REAP_S = 5.0
"""How often warm pools idle past `SLUICE_INGEST_WARM_IDLE_S` are looked for and shut down."""
STOP_GRACE_S = 30.0
"""How long a timed-out job's thread is given to end once its Ray Data execution is shut down."""


@dataclass
class PendingQueue:
    """One collection's unclaimed queue entries, as the scheduler sees them: when the oldest and
    the newest were queued (`time.time()`)."""

    collection_id: str
    namespace: str
    oldest: float
    newest: float = 0.0

    def due(self, *, settle_s: float, max_delay_s: float) -> float:
        """When the queue is ready, unless full first: quiet for `settle_s`, or its oldest waited `max_delay_s`."""
        return min(max(self.newest, self.oldest) + settle_s, self.oldest + max_delay_s)


def next_queue(ready: Sequence[PendingQueue], *, served: Mapping[str, int], running: Mapping[str, int],
               per_namespace: int) -> PendingQueue | None:
    """The queue whose task starts next: among namespaces running fewer than `per_namespace` jobs,
    the one served least recently (never served first; ties: the oldest queued object), and of its
    queues the one with the oldest object. `served` maps a namespace to the turn it was last served."""
    open_ = [q for q in ready if running.get(q.namespace, 0) < per_namespace]
    if not open_:
        return None
    return min(open_, key=lambda q: (served.get(q.namespace, 0), q.oldest, q.collection_id))


class JobStopped(Exception):
    """Raised into a stopped job's sink (its task ran past its time limit, or was interrupted)."""

# --- the scheduler ---------------------------------------------------------------------------

class IngestScheduler:
    """Turns queued objects into tasks and runs their jobs; one per process that runs functions."""

    def __init__(
        self, *, catalog: Catalog, vectors: VectorIndex, store: ObjectStore, bus: EventBus, topics: Topics,
        settings: Settings, compute: Any, publish: Publish | None = None,
    ) -> None:
        self.catalog, self.vectors, self.store, self.bus, self.topics = catalog, vectors, store, bus, topics
        self.publish: Publish = publish if publish is not None else _DirectPublish(catalog, Publisher(bus, topics))
        self.settings, self.compute = settings, compute
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task] = {}  # collection_id -> task
        self._namespaces: dict[str, str] = {}  # collection_id -> namespace, of the running tasks
        self._served: dict[str, int] = {}  # namespace -> turn in which it last got a job
        self._turns = itertools.count(1)
        self._dirty = True
        self._next_scan = 0.0
        self._stopping = False
        self.pools = WarmPools(idle_s=settings.ingest_warm_idle_s, max_objects=settings.ingest_warm_max_objects)
        self._next_reap = 0.0

    def poke(self) -> None:
        self._dirty = True
        self._wake.set()

    def _running_per_namespace(self) -> Counter[str]:
        return Counter(self._namespaces[c] for c in self._running if c in self._namespaces)

    @classmethod
    def for_platform(cls, platform: Any) -> IngestScheduler:
        return cls(catalog=platform.catalog, vectors=platform.vectors, store=platform.store, bus=platform.bus,
                   topics=platform.topics, settings=platform.settings, compute=platform.compute, publish=platform.outbox)

    async def run(self, stop: asyncio.Event) -> None:
        """Schedule until `stop` is set. Running jobs are left to finish or, when the process
        ends first, to be run again by the next scheduler (their lease runs out)."""
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        next_reconcile = 0.0
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= next_reconcile:
                        next_reconcile = time.monotonic() + self.settings.ingest_reconcile_s
                        await self.reconcile()
                        await self.sweep()
                    await self.recover()
                    await self.schedule()
                    if time.monotonic() >= self._next_reap:
                        self._next_reap = time.monotonic() + REAP_S
                        await asyncio.to_thread(self.pools.reap)
                except Exception as exc:  # noqa: BLE001 - the catalog may be briefly down: try again
                    log.warning("ingest.schedule_failed", error=f"{type(exc).__name__}: {exc}")
                self._wake.clear()
                stopping = asyncio.create_task(stop.wait())
                waking = asyncio.create_task(self._wake.wait())
                await asyncio.wait([stopping, waking], timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                waking.cancel()
        finally:
            self._stopping = True
            heartbeat.cancel()
            running = list(self._running.values())
            if running:
                await asyncio.wait(running, timeout=5)
            for task in running:
                task.cancel()
            with contextlib.suppress(Exception):  # Ray may be gone already: its actors went with it
                await asyncio.to_thread(self.pools.close)

    async def drain(self, timeout_s: float = 600.0) -> None:
        """Schedule until the queue is empty and no job runs (tests, `sluice demo`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.schedule(force=True)
            if not self._running and not await self.catalog.find(INGEST_QUEUE, {"claimed_by": None}, limit=1):
                return
            if self._running:
                await asyncio.wait(list(self._running.values()), timeout=0.5)
            else:
                await asyncio.sleep(0.05)
        raise TimeoutError(f"ingest did not drain within {timeout_s}s")

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(HEARTBEAT_S)
            for collection_id in list(self._running):
                try:
                    await self.catalog.update(JOB_LEASES, collection_id, {"expires_at": time.time() + LEASE_S},
                                              expect={"owner": self.owner})
                except Exception as exc:  # noqa: BLE001
                    log.warning("ingest.heartbeat_failed", collection_id=collection_id, error=str(exc))

    # --- leases: one job per collection at a time, across processes --------------------------

    async def _acquire(self, collection_id: str, task_id: str) -> bool:
        lease = {"collection_id": collection_id, "owner": self.owner, "task_id": task_id, "expires_at": time.time() + LEASE_S}
        try:
            await self.catalog.insert(JOB_LEASES, collection_id, lease)
            return True
        except AlreadyExists:
            held = await self.catalog.get(JOB_LEASES, collection_id)
            if held is None or (held["expires_at"] > time.time() and owner_alive(held["owner"])):
                return False
            return await self.catalog.update(JOB_LEASES, collection_id, lease,
                                             expect={"owner": held["owner"], "expires_at": held["expires_at"]}) is not None

    async def recover(self) -> None:
        """Run again the tasks whose owner died: their lease expired while they were unfinished."""
        for lease in await self.catalog.find(JOB_LEASES):
            if lease["expires_at"] > time.time() and owner_alive(lease["owner"]):
                continue
            collection_id, old_task = lease["collection_id"], lease.get("task_id")
            if collection_id in self._running or len(self._running) >= self.settings.ingest_max_jobs:
                continue
            task = await self.catalog.get(TASKS, old_task) if old_task else None
            if task is not None and task["status"] in TASK_FINISHED:
                await self.catalog.delete(JOB_LEASES, collection_id)
                continue
            if task is not None and self._running_per_namespace()[task["namespace"]] >= self.settings.ingest_max_jobs_per_namespace:
                continue  # its namespace's slots are taken here: resumed once one is free
            if not await self._acquire(collection_id, old_task or ""):
                continue
            entries = await self.catalog.find(INGEST_QUEUE, {"claimed_by": old_task}) if old_task else []
            if task is None or old_task is None or not entries:
                await self.catalog.delete(JOB_LEASES, collection_id)
                continue
            if int(task.get("resumed") or 0) >= self.settings.ingest_max_attempts:  # its runs keep killing their process
                reason = (f"the task's process died {task.get('resumed', 0) + 1} times while running it "
                          "(SLUICE_INGEST_MAX_ATTEMPTS): not resumed again; its objects are queued again by the next sweep")
                await self._fail(task, entries, reason, None, failures=[
                    IngestFailure(object_id=object_id_for(task["namespace"], e["object"]["bucket"], e["object"]["key"]),
                                  step="process", error="its process died while the task ran") for e in entries])
                continue
            log.warning("ingest.task_resumed", task_id=old_task, collection_id=collection_id, previous_owner=lease["owner"])
            await self.catalog.update(
                TASKS, old_task, {"status": TaskStatus.QUEUED, "owner": self.owner, "resumed": task.get("resumed", 0) + 1}
            )
            self._start(collection_id, task["namespace"], old_task, entries)

    async def reconcile(self) -> Counter[str]:
        """Repair what a crash between two writes (or an older Sluice) left behind; run at start and
        every `SLUICE_INGEST_RECONCILE_S`. Counts what it fixed:
        - `unclaimed`: queue entries claimed by a task that does not exist go back to the queue;
        - `cleared`: entries of a finished task are removed (its close was cut short);
        - `orphans`: an unfinished task that no lease names (its process died between two writes)
          gets an expired lease, so `recover` resumes it like any task whose process died;
        - `removals`: REST deletes cut short between the store and their event are finished
          (`services.remove.complete_removals`).
        Only records older than one lease period are touched: anything younger may be a write in
        flight in another process."""
        fixed: Counter[str] = Counter()
        settled = time.time() - LEASE_S
        mine = {task.get_name().removeprefix("sluice-ingest-") for task in self._running.values()}
        claimant = ""
        while True:  # each task that claims entries, one short read apiece through the index on `claimed_by`
            head = await self.catalog.find(INGEST_QUEUE, {"claimed_by": {"$gt": claimant}}, order_by="claimed_by", limit=1)
            if not head:
                break
            task_id = claimant = head[0]["claimed_by"]
            if task_id in mine:
                continue
            task = await self.catalog.get(TASKS, task_id)
            if task is None:
                if await self.catalog.find(INGEST_QUEUE, {"claimed_by": task_id, "claimed_at": {"$gte": settled}}, limit=1):
                    continue  # claimed lately: its task may be a write in flight
                while entries := await self.catalog.find(INGEST_QUEUE, {"claimed_by": task_id}, limit=UNCLAIM_PAGE):
                    await self.catalog.upsert_many(INGEST_QUEUE, [(e["id"], {**_entry(e), "claimed_by": None}) for e in entries])
                    fixed["unclaimed"] += len(entries)
            elif task["status"] in TASK_FINISHED:
                fixed["cleared"] += await self.catalog.delete_many(INGEST_QUEUE, {"claimed_by": task_id})
        for task in await self.catalog.find(TASKS, {"status": {"$in": [TaskStatus.QUEUED, TaskStatus.RUNNING]}}, limit=SCAN_PAGE):
            if task["task_id"] in mine or await self.catalog.get(JOB_LEASES, task["collection_id"]) is not None:
                continue  # running here, or `recover` sees it (or the collection's current task first)
            if _created_before(task, settled):
                with contextlib.suppress(AlreadyExists):
                    await self.catalog.insert(JOB_LEASES, task["collection_id"], {
                        "collection_id": task["collection_id"], "owner": "orphan", "task_id": task["task_id"], "expires_at": 0})
                    fixed["orphans"] += 1
        fixed["removals"] = await complete_removals(self.catalog, self.publish,
                                                     lambda ns: NamespaceStore(self.store, self.settings.data_bucket, ns))
        fixed += Counter()  # drop zero counts
        if fixed:
            log.warning("ingest.reconciled", **fixed)
            self.poke()
        return fixed

    async def sweep(self) -> int:
        """Objects in a collection's bucket that have no ingest record (a notification lost while
        nothing listened, an upload never confirmed, objects older than the collection): one
        backfill per collection (not forced: versions already written or queued are skipped), at
        most once per `SLUICE_INGEST_SWEEP_S` across processes (lease `leases/ingest-sweep`), first
        at start. Returns how many backfills it queued."""
        now_s = time.time()
        held = await self.catalog.get(LEASES, SWEEP_LEASE)
        mine = {"owner": self.owner, "expires_at": now_s + self.settings.ingest_sweep_s}
        try:
            if held is None:
                await self.catalog.transact([Insert(LEASES, SWEEP_LEASE, mine)])
            elif held.get("expires_at", 0) <= now_s:
                await self.catalog.transact([Update(LEASES, SWEEP_LEASE, mine, expect={"expires_at": held.get("expires_at")})])
            else:
                return 0
        except (AlreadyExists, WriteConflict):
            return 0  # another process sweeps this period
        queued, offset = 0, 0
        while True:
            page = await self.catalog.find(COLLECTIONS, limit=SWEEP_PAGE, offset=offset)
            offset += len(page)
            for collection in page:
                if await self.catalog.count(BACKFILLS, {"collection_id": collection["collection_id"],
                                                        "status": {"$in": [BackfillStatus.QUEUED, BackfillStatus.RUNNING]}}):
                    continue  # one is under way: it lists the same bucket
                await queue_backfill(self.publish, collection["namespace"], collection, force=False, trigger="sweep")
                queued += 1
            if len(page) < SWEEP_PAGE:
                break
        if queued:
            log.info("ingest.swept", backfills=queued)
        return queued

    # --- scheduling ------------------------------------------------------------------------

    _due: asyncio.TimerHandle | None = None
    """The wake-up `schedule` arranged for the moment the next queue becomes ready."""
    _last_scan: float = 0.0

    async def schedule(self, *, force: bool = False) -> None:
        """Start tasks while slots are free: namespaces in turn (see `next_queue`), at most
        `ingest_max_jobs_per_namespace` of one namespace, one per collection, each collection once
        its queue is ready (see the module's docstring; `force`: every queue is ready)."""
        if len(self._running) >= self.settings.ingest_max_jobs:
            return
        now_m = time.monotonic()
        if not (force or self._dirty or now_m >= self._next_scan):
            return  # nothing changed since the last look: reading the queue again would find the same
        if not force and now_m - self._last_scan < MIN_SCAN_S and now_m < self._next_scan:
            self._wake_in(self._last_scan + MIN_SCAN_S - now_m)  # objects pouring in: one look per MIN_SCAN_S
            return
        self._dirty = False
        self._last_scan = now_m
        queues = await self._pending()
        clock, max_delay, settle = time.time(), self.settings.ingest_max_delay_s, self.settings.ingest_settle_s
        self._next_scan = time.monotonic() + RESCAN_S
        ready: list[PendingQueue] = []
        for queue in queues:
            due = queue.due(settle_s=settle, max_delay_s=max_delay)
            if force or clock >= due or await self._full(queue.collection_id):
                ready.append(queue)
            else:  # look again when it becomes due
                self._next_scan = min(self._next_scan, time.monotonic() + due - clock)
                self._wake_in(due - clock)
        while len(self._running) < self.settings.ingest_max_jobs:
            pick = next_queue(ready, served=self._served, running=self._running_per_namespace(),
                              per_namespace=self.settings.ingest_max_jobs_per_namespace)
            if pick is None:
                return
            ready.remove(pick)
            await self._claim(pick)

    def _wake_in(self, delay_s: float) -> None:
        """`poke` in `delay_s` seconds, unless a wake-up at or before then is already arranged."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, delay_s) + 0.001
        due = self._due
        if due is not None and not due.cancelled() and loop.time() <= due.when() <= at:
            return
        if due is not None:
            due.cancel()
        self._due = loop.call_at(at, self.poke)

    async def _pending(self) -> list[PendingQueue]:
        """The collections with unclaimed entries, but those whose job runs here, each with when its
        oldest and its newest entry were queued: a walk through the queue's indexes, three one-row
        reads per collection, however many entries are queued."""
        queues: list[PendingQueue] = []
        where: dict[str, Any] = {"claimed_by": None}
        while head := await self.catalog.find(INGEST_QUEUE, where, order_by="collection_id", limit=1):
            collection_id = head[0]["collection_id"]
            where = {"claimed_by": None, "collection_id": {"$gt": collection_id}}
            if collection_id in self._running:
                continue
            unclaimed = {"claimed_by": None, "collection_id": collection_id}
            oldest = await self.catalog.find(INGEST_QUEUE, unclaimed, order_by="queued_at", limit=1)
            newest = await self.catalog.find(INGEST_QUEUE, unclaimed, order_by="queued_at", descending=True, limit=1)
            if oldest and newest:  # (unless claimed meanwhile)
                queues.append(PendingQueue(collection_id, oldest[0]["namespace"], oldest[0]["queued_at"], newest[0]["queued_at"]))
        return queues

    async def _full(self, collection_id: str) -> bool:
        """Whether the collection has `ingest_max_objects` unclaimed entries (without counting them all)."""
        return bool(await self.catalog.find(INGEST_QUEUE, {"claimed_by": None, "collection_id": collection_id},
                                            order_by="queued_at", limit=1, offset=self.settings.ingest_max_objects - 1))

    async def _claim(self, queue: PendingQueue) -> None:
        """Make `queue` a task of its oldest `ingest_max_objects` entries and start it, unless another
        process holds the collection."""
        collection_id = queue.collection_id
        task_id = "tsk_" + secrets.token_hex(10)
        if not await self._acquire(collection_id, task_id):
            return
        chosen = await self.catalog.find(INGEST_QUEUE, {"claimed_by": None, "collection_id": collection_id},
                                         order_by="queued_at", limit=self.settings.ingest_max_objects)
        if not chosen:  # claimed or removed meanwhile
            await self.catalog.delete(JOB_LEASES, collection_id)
            return
        first = chosen[0]
        record = {
            "task_id": task_id, "namespace": first["namespace"], "collection_id": collection_id, "status": TaskStatus.QUEUED,
            "objects": len(chosen), "correlation_id": first.get("correlation_id"), "owner": self.owner,
            "created_at": now(), "started_at": None, "finished_at": None, "attempts": 0,
            "documents_written": 0, "vectors_upserted": {}, "rows_failed": 0, "rows_skipped": 0, "failures": [],
            "warnings": [], "reason": None, "rows_done": 0, "rows_total": len(chosen),
        }
        claimed_at = time.time()
        try:  # the claims and the task together: no entry is ever claimed by a task that does not exist
            await self.catalog.transact([
                *(Update(INGEST_QUEUE, e["id"], {"claimed_by": task_id, "claimed_at": claimed_at}, expect={"claimed_by": None})
                  for e in chosen),
                Insert(TASKS, task_id, record),
            ])
        except WriteConflict:  # an entry went meanwhile (claimed elsewhere, or its object deleted): look again
            await self.catalog.delete(JOB_LEASES, collection_id)
            self.poke()
            return
        log.info("ingest.task_created", task_id=task_id, collection_id=collection_id, namespace=queue.namespace,
                 objects=len(chosen), running=len(self._running) + 1)
        self._start(collection_id, queue.namespace, task_id, chosen)

    def _start(self, collection_id: str, namespace: str, task_id: str, entries: list[dict]) -> None:
        job = asyncio.create_task(self._run(task_id, collection_id, entries), name=f"sluice-ingest-{task_id}")
        self._running[collection_id] = job
        self._namespaces[collection_id] = namespace
        self._served[namespace] = next(self._turns)

        def done(_: asyncio.Task) -> None:
            if self._running.get(collection_id) is job:
                self._running.pop(collection_id, None)
                self._namespaces.pop(collection_id, None)
            self.poke()

        job.add_done_callback(done)

    # --- one task --------------------------------------------------------------------------

    def _event(self, task: dict, payload: Any) -> AnyEnvelope:
        return make(payload, namespace=task["namespace"], correlation_id=task.get("correlation_id"))

    async def _publish(self, task: dict, payload: Any) -> None:
        await self.publish(self._event(task, payload))

    async def _run(self, task_id: str, collection_id: str, entries: list[dict]) -> None:
        """Run the task's job; a transient failure (an unreachable store or index, a Ray worker or
        node lost) runs it again after a backoff, up to `SLUICE_INGEST_MAX_ATTEMPTS` attempts in
        all (counted on the task record, across processes), then the task fails with the last error."""
        task = await self.catalog.update(TASKS, task_id, {"status": TaskStatus.RUNNING, "started_at": now(), "owner": self.owner})
        assert task is not None
        attempts = int(task.get("attempts") or 0)
        while True:
            attempts += 1
            if attempts > 1:
                task = await self.catalog.update(TASKS, task_id, {"attempts": attempts}) or task
            error, writer = await self._attempt(task, collection_id, entries, first=attempts == 1)
            if error is None:
                return
            if attempts >= self.settings.ingest_max_attempts:
                await self._fail(task, entries, f"the job failed {attempts} times (SLUICE_INGEST_MAX_ATTEMPTS); last error: {error}",
                                 writer)
                return
            delay = backoff(attempts, base_s=self.settings.ingest_retry_base_s, max_s=60.0)
            log.warning("ingest.retry", task_id=task_id, attempt=attempts, retry_in_s=round(delay, 2), error=error)
            await self.catalog.update(TASKS, task_id, {"status": TaskStatus.QUEUED, "attempts": attempts, "last_error": error,
                                                       "retry_at": time.time() + delay})
            await asyncio.sleep(delay)
            await self.catalog.update(TASKS, task_id, {"status": TaskStatus.RUNNING, "retry_at": None})

    async def _attempt(self, task: dict, collection_id: str, entries: list[dict], *, first: bool) -> tuple[str | None, TaskWriter | None]:
        """One run of the job: (None, writer) once the task is finished (completed or failed for
        good), (error, writer) when a transient failure should run it again."""
        task_id = task["task_id"]
        writer: TaskWriter | None = None
        limit_s = self.settings.ingest_job_timeout_s
        deadline = time.monotonic() + limit_s
        limit = asyncio.timeout(limit_s)
        try:
            async with limit:
                collection = await self.catalog.get("collections", collection_id)
                if collection is None:
                    raise IngestRefused(f"collection {collection_id!r} was deleted before its objects were ingested")
                plugin = await self._plugin(collection)
                await self._check_vectors(collection, plugin)
                spec, steps, warnings = await self._prepare(collection, plugin, deadline=deadline)
                sources, rows, read_failures = self._inputs(collection, plugin, entries)
                if first:
                    await self._publish(task, IngestStarted(task_id=task_id, collection_id=collection_id, objects=len(entries)))
                writer = TaskWriter(
                    catalog=self.catalog, vectors=self.vectors, collection=collection, plugin=plugin, task_id=task_id,
                    sources=sources, features=[f["name"] for f in collection["vector_indexes"]],
                    on_progress=self._progress_reporter(task, len(entries)),
                )
                for object_id, error in read_failures:
                    writer.fail(object_id, "read", error)
                if warnings:
                    await self.catalog.update(TASKS, task_id, {"warnings": warnings})
                await self._run_job(spec, steps, rows, writer, task_id=task_id)
            await self._finish(task, collection, entries, writer, warnings)
            return None, writer
        except asyncio.CancelledError:
            log.warning("ingest.task_interrupted", task_id=task_id)  # the lease runs out; a scheduler resumes it
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit.expired():
                reason = (f"the task ran past its time limit of {limit_s:g} s (SLUICE_INGEST_JOB_TIMEOUT_S, "
                          "ingest_job_timeout_s): its job was stopped")
                log.error("ingest.job_timeout", task_id=task_id, collection_id=collection_id, limit_s=limit_s)
            elif isinstance(exc, IngestRefused):
                reason = str(exc)
            elif transient(exc):
                return f"{type(exc).__name__}: {exc}", writer
            else:
                reason = f"the job failed: {type(exc).__name__}: {exc}"
                log.error("ingest.job_error", task_id=task_id, exc_info=exc)
            await self._fail(task, entries, reason, writer)
            return None, writer

    async def _plugin(self, collection: dict) -> dict:
        extractor = collection["feature_extractor"]
        plugin = await self.catalog.get(VERSIONS, extractor["plugin_id"])
        if plugin is None:
            raise IngestRefused(
                f"plugin {extractor['feature_extractor_name']} {extractor['version']} ({extractor['plugin_id']}) is no longer "
                "registered: register it again or create the collection with another version")
        return plugin

    async def _check_vectors(self, collection: dict, plugin: dict) -> None:
        """Every vector the plugin writes must exist in the collection's index with its dimension."""
        features = (plugin.get("manifest") or {}).get("features") or []
        if not features:
            return
        index = collection.get("index_name")
        existing = await self.vectors.collection_vectors(index) if index else None
        if existing is None:
            raise IngestRefused(f"vector index {index!r} of collection {collection['collection_name']!r} does not exist")
        for feature in features:
            name, dim = feature["feature_name"], feature["embedding_dim"]
            spec = existing.get(name)
            if spec is None:
                raise IngestRefused(
                    f"plugin {plugin['plugin_name']} {plugin['version']} writes vector {name!r}, which index {index!r} lacks "
                    f"(it has: {', '.join(sorted(existing)) or 'none'}); nothing was run")
            if spec.size != dim:
                raise IngestRefused(
                    f"plugin {plugin['plugin_name']} {plugin['version']} writes {dim}-dimension vectors {name!r}, index "
                    f"{index!r} holds {spec.size}; nothing was run")

    async def _prepare(self, collection: dict, plugin: dict, *, deadline: float) -> tuple[PluginSpec, list, list[str]]:
        if not getattr(self.compute, "runs_jobs", False):
            raise IngestRefused("compute is disabled (SLUICE_COMPUTE=none): set SLUICE_COMPUTE=ray to run ingest jobs")
        from engine.ingest.job import cluster_resources, fit_to_cluster, gpu_shortfall, plan_steps

        resources = await asyncio.to_thread(cluster_resources)
        gpus = float(resources.get("GPU", 0.0))
        spec = await plugin_spec(self.catalog, self.store, self.settings, collection, plugin, gpus=int(gpus))
        try:
            # The planning task may wait for a CPU that other jobs hold: the task's own limit bounds
            # it (a little later, so that a task out of time fails naming its limit, not this wait).
            timeout_s = max(1.0, deadline - time.monotonic()) + 5.0
            steps = await asyncio.to_thread(self.pools.plan, spec, lambda s: plan_steps(s, timeout_s=timeout_s))
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            raise IngestRefused(f"building the steps of {plugin['plugin_name']} {plugin['version']} failed: "
                                f"{type(cause).__name__}: {cause}") from exc
        if self.settings.require_gpu:
            shortfall = gpu_shortfall(steps, gpus=gpus)
            if shortfall:
                raise IngestRefused(f"{shortfall} (SLUICE_REQUIRE_GPU is set)")
        steps, warnings = fit_to_cluster(steps, gpus=gpus, memory=float(resources.get("memory", math.inf)))
        for warning in warnings:
            log.warning("ingest.resource_fallback", detail=warning)
        return spec, steps, warnings

    def _inputs(
        self, collection: dict, plugin: dict, entries: Sequence[dict],
    ) -> tuple[dict[str, Source], list[dict], list[tuple[str, str]]]:
        """One row per object, its bytes not read here: `data` is the object's URL (what
        `open_asset` reads), and an object that may go inline (text, or a small file that may be
        text) carries its location in `INLINE_COLUMN`: the first stage reads it into `data` on the
        worker, batch by batch (`engine.ingest.inputs`), so this process never holds a task's bytes."""
        objects = NamespaceStore(self.store, self.settings.data_bucket, collection["namespace"])
        limit = self.settings.ingest_max_inline_bytes
        sources: dict[str, Source] = {}
        failures: list[tuple[str, str]] = []
        rows: list[dict] = []
        for entry in entries:
            obj = ObjectCreated.model_validate(entry["object"])
            object_id = object_id_for(collection["namespace"], obj.bucket, obj.key)
            document_id = document_id_for(collection["collection_id"], obj.bucket, obj.key, obj.version_marker)
            mime = (obj.content_type or "").split(";", 1)[0].strip().lower()
            if not mime or mime in ("application/octet-stream", "binary/octet-stream"):
                mime = mimetypes.guess_type(obj.key)[0] or ""
            kind = blob_type_for(mime) if mime else "file"
            if kind == "text" and obj.size > limit:
                failures.append((object_id, f"text object of {obj.size} bytes is over the inline limit "
                                            f"({limit}, SLUICE_INGEST_MAX_INLINE_BYTES)"))
                continue
            inline = None
            if kind == "text" or (kind == "file" and obj.size <= limit):
                bucket, key = objects.locate(obj.bucket, obj.key)
                inline = json.dumps({"bucket": bucket, "key": key, "name": f"{obj.bucket}/{obj.key}", "text": kind == "text",
                                     "max_bytes": limit})
            sources[object_id] = Source(entry["id"], obj, object_id, document_id, inline is not None)
            rows.append({
                "data": objects.url(obj.bucket, obj.key), "document_id": document_id, "object_id": object_id,
                "blob_id": f"{object_id}/content", "blob_property": "content", "blob_type": kind,
                "collection_id": collection["collection_id"], "feature_extractor_id": plugin["plugin_id"],
                "mime_type": mime or "application/octet-stream", "size_bytes": obj.size, INLINE_COLUMN: inline,
            })
        return sources, rows, failures

    def _progress_reporter(self, task: dict, total: int):
        last = [0.0]

        async def report(done: int) -> None:
            if time.monotonic() - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = time.monotonic()
            await self.catalog.update(TASKS, task["task_id"], {"rows_done": done})
            await self._publish(task, IngestProgress(task_id=task["task_id"], rows_done=min(done, total), rows_total=total))

        return report

    async def _run_job(self, spec: PluginSpec, steps: list, rows: list[dict], writer: TaskWriter, *, task_id: str = "") -> None:
        """Run the Ray Data job in a thread. When this coroutine is cancelled (the task's time limit,
        or the scheduler stopping), the job is stopped: its sink refuses further batches, and its
        Ray Data execution is shut down, killing its actors (and so the plugin hosts in them),
        which ends the thread even while a plugin never returns."""
        from engine.ingest.job import run_job, shut_down

        loop = asyncio.get_running_loop()
        stop = threading.Event()
        stoppers: list[Callable[[], Any]] = []

        def sink(batch: pd.DataFrame) -> None:
            if stop.is_set():
                raise JobStopped("the job was stopped")
            if self._stopping:
                raise RuntimeError("the scheduler is stopping")
            asyncio.run_coroutine_threadsafe(writer.write(batch), loop).result()

        def on_dataset(dataset: Any) -> None:
            stoppers.append(lambda: shut_down(dataset, JobStopped("the ingest task was stopped")))

        # each job is sized to its slot's share of the cluster, so the other slot's job (another
        # tenant's, by the turns above) starts at once instead of waiting for this one's actors
        share = 1 / self.settings.ingest_max_jobs
        if self.pools.takes(spec, len(rows)):  # small: the collection's warm pool, no pipeline to start
            run = functools.partial(self.pools.run, spec, steps, rows, sink, on_stop=stoppers.append, share=share)
        else:
            await asyncio.to_thread(self.pools.release_idle)  # warm actors give their CPUs back to the pipeline
            run = functools.partial(run_job, spec, steps, rows, sink, on_dataset=on_dataset, share=share)
        job = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()
            await self._stop_job(job, stoppers, task_id=task_id)
            raise

    async def _stop_job(self, job: asyncio.Future, stoppers: list[Callable[[], Any]], *, task_id: str) -> None:
        """Stop the job until its thread ends, for at most `STOP_GRACE_S`: shut down its Ray Data
        execution (once it has a dataset), or kill its warm pool's actors."""
        started = time.monotonic()
        stopped = 0
        while not job.done() and time.monotonic() - started < STOP_GRACE_S:
            if stoppers:
                try:
                    stopped += int(await asyncio.to_thread(stoppers[0]) or 0)
                except Exception as exc:  # noqa: BLE001 - Ray going away at shutdown: the thread ends with it
                    log.warning("ingest.job_stop_failed", task_id=task_id, error=f"{type(exc).__name__}: {exc}")
            await asyncio.wait([job], timeout=0.5)
        if job.done():
            if not job.cancelled():
                job.exception()  # retrieved: the task's outcome is the time limit, not what the thread raised
            log.warning("ingest.job_stopped", task_id=task_id, executions_shut_down=stopped,
                        after_s=round(time.monotonic() - started, 2))
        else:
            log.error("ingest.job_not_stopped", task_id=task_id, grace_s=STOP_GRACE_S,
                      detail="its thread still runs; its sink refuses every batch")

    async def _finish(self, task: dict, collection: dict, entries: list[dict], writer: TaskWriter, warnings: list[str]) -> None:
        task_id = task["task_id"]
        nonempty = sum(1 for e in entries if (e["object"].get("size") or 0) > 0)
        if writer.rows_skipped:
            warnings = warnings + [f"{n} rows skipped: {reason}" for reason, n in writer.skip_reasons.items()]
        if writer.documents_written == 0 and nonempty:
            first = writer.failures[0] if writer.failures else None
            reason = (f"nothing was written for {nonempty} non-empty objects: {writer.rows_failed} rows failed, "
                      f"{writer.rows_skipped} skipped" + (f"; first failure: {first.step}: {first.error}" if first else "")
                      + (f"; {'; '.join(warnings)}" if warnings else ""))
            await self._fail(task, entries, reason, writer, warnings=warnings)
            return
        await self._record_objects(collection, entries, writer, task_id)
        outcome: Literal["COMPLETED", "COMPLETED_WITH_ERRORS"] = "COMPLETED_WITH_ERRORS" if writer.rows_failed else "COMPLETED"
        status = TaskStatus(outcome)
        facts = {
            "status": status, "finished_at": now(), "documents_written": writer.documents_written,
            "vectors_upserted": writer.vectors_upserted, "rows_failed": writer.rows_failed, "rows_skipped": writer.rows_skipped,
            "failures": [f.model_dump() for f in writer.failures], "warnings": warnings, "rows_done": len(entries),
        }
        completed = self._event(task, IngestCompleted(
            task_id=task_id, collection_id=collection["collection_id"], status=outcome, objects=len(entries),
            documents_written=writer.documents_written, vectors_upserted=writer.vectors_upserted,
            rows_failed=writer.rows_failed, failures=writer.failures,
        ))
        await self._close_task(task, facts, completed)
        log.info("ingest.completed", task_id=task_id, status=status, documents=writer.documents_written,
                 vectors=writer.vectors_upserted, rows_failed=writer.rows_failed)

    async def _record_objects(self, collection: dict, entries: list[dict], writer: TaskWriter, task_id: str) -> None:
        """Mark each object version written (or failed, so a redelivery retries it), and remove
        what earlier versions of these objects left behind."""
        collection_id = collection["collection_id"]
        records, replaced = [], []
        keys = [ingested_key(collection_id, e['object']['bucket'], e['object']['key']) for e in entries]
        previous: dict[str, dict] = {}
        for i in range(0, len(keys), 500):
            for record in await self.catalog.find(INGESTED, {"id": {"$in": keys[i:i + 500]}}):
                previous[record["id"]] = record
        for key, entry in zip(keys, entries, strict=True):
            obj = ObjectCreated.model_validate(entry["object"])
            object_id = object_id_for(collection["namespace"], obj.bucket, obj.key)
            status = "failed" if object_id in writer.failed_objects else "written"
            before = previous.get(key)
            if before is not None and before.get("marker") != obj.version_marker and status == "written":
                replaced.append((object_id, obj.version_marker))
            records.append((key, {"collection_id": collection_id, "object_id": object_id, "bucket": obj.bucket, "key": obj.key,
                                  "marker": obj.version_marker, "status": status, "task_id": task_id, "at": now()}))
        for object_id, marker in replaced:
            stale = await self.catalog.find(DOCUMENTS, {"collection_id": collection_id, "object_id": object_id,
                                                        "source.version": {"$ne": marker}})
            ids = [d["point_id"] for d in stale if d.get("point_id")]
            if ids and collection.get("index_name"):
                await self.vectors.delete_points(collection["index_name"], ids)
            if stale:
                await self.catalog.delete_many(DOCUMENTS, {"collection_id": collection_id, "object_id": object_id,
                                                           "source.version": {"$ne": marker}})
        await self.catalog.upsert_many(INGESTED, records)

    async def _fail(self, task: dict, entries: list[dict], reason: str, writer: TaskWriter | None,
                    *, warnings: list[str] | None = None, failures: list[IngestFailure] | None = None) -> None:
        """The task FAILED, with its `failures` (default: the writer's), in one outbox commit with
        `IngestFailed`. Objects without an `ingested_objects` record are queued again by the sweep."""
        task_id, collection_id = task["task_id"], task["collection_id"]
        failures = failures if failures is not None else writer.failures if writer else []
        log.error("ingest.failed", task_id=task_id, collection_id=collection_id, reason=reason)
        facts = {
            "status": TaskStatus.FAILED, "finished_at": now(), "reason": reason,
            "documents_written": writer.documents_written if writer else 0,
            "vectors_upserted": writer.vectors_upserted if writer else {},
            "rows_failed": writer.rows_failed if writer else 0, "rows_skipped": writer.rows_skipped if writer else 0,
            "failures": [f.model_dump() for f in failures], **({"warnings": warnings} if warnings is not None else {}),
        }
        failed = self._event(task, IngestFailed(task_id=task_id, collection_id=collection_id, reason=reason, failures=failures))
        await self._close_task(task, facts, failed)

    async def _close_task(self, task: dict, facts: dict, event: AnyEnvelope) -> None:
        """The task's outcome, the end of its lease and its completion event: one transaction (the
        outbox), retried while the catalog is unreachable, so a finished task always announces it.
        Its queue entries go after; the reconciler removes any a crash left behind."""
        task_id, collection_id = task["task_id"], task["collection_id"]
        writes = [Update(TASKS, task_id, facts), Delete(JOB_LEASES, collection_id)]
        async for attempt in _catalog_retries():
            with attempt:
                await self.publish.commit(writes, [event])
        with contextlib.suppress(Exception):  # left over: `reconcile` removes entries of finished tasks
            await self.catalog.delete_many(INGEST_QUEUE, {"claimed_by": task_id})


_TRANSIENT_RAY_ERRORS = frozenset({
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
    "ObjectFetchTimedOutError", "OwnerDiedError", "ReferenceCountingAssertionError", "RaySystemError", "OutOfMemoryError",
    "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError", "RayChannelError",
})


def transient(exc: BaseException) -> bool:
    """Whether a job failure is worth another attempt: the platform's own `TransientError`
    (a store, the catalog or the index unreachable), a lost connection, or Ray losing a worker,
    an actor, a node or an object. A plugin's error, a refusal or a time limit is not: a rerun
    would end the same way. Causes are followed (Ray wraps what a worker raised)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (TransientError, ConnectionError)):
            return True
        if type(current).__module__.startswith("ray") and type(current).__name__ in _TRANSIENT_RAY_ERRORS:
            return True
        current = current.__cause__ or current.__context__
    return False


def _catalog_retries() -> AsyncRetrying:
    """Retries for a write that must land: while the catalog is unreachable, with backoff, for up to 10 minutes."""
    return AsyncRetrying(retry=retry_if_exception_type((TransientError, ConnectionError)),
                         wait=wait_exponential_jitter(multiplier=0.2, max=10), stop=stop_after_delay(600), reraise=True)


class _DirectPublish:
    """The `Publish` port without an outbox (a scheduler built by hand): writes first, then events
    straight to the bus."""

    def __init__(self, catalog: Catalog, publisher: Publisher) -> None:
        self.catalog, self.publisher = catalog, publisher

    async def __call__(self, *events: AnyEnvelope) -> None:
        await self.publisher(*events)

    async def commit(self, writes: Sequence[Any] = (), events: Sequence[AnyEnvelope] = ()) -> list[Any]:
        results = await self.catalog.transact(list(writes))
        await self.publisher(*events)
        return results


def _created_before(task: dict, moment: float) -> bool:
    try:
        return datetime.fromisoformat(str(task.get("created_at"))).timestamp() < moment
    except ValueError:
        return True  # no readable time: an old record


def _entry(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "id"}
