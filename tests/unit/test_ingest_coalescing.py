"""The ingest scheduler's coalescing rule and its reads of the queue, on the in-memory catalog with
the job itself left out (`_start` records what would run): a queue starts once quiet
(`ingest_settle_s`), once its oldest waited `ingest_max_delay_s`, or once full, and never while the
collection's job runs; looking for work reads a few rows per collection, whatever the queue's length."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from functions.records.collection import INGEST_QUEUE
from functions.records.tasks import TASKS
from functions.runtime.scheduler import IngestScheduler, PendingQueue
from infra.catalog import MemoryCatalog
from infra.settings import Settings

pytestmark = pytest.mark.unit


class Publish:
    async def __call__(self, *events: Any) -> None:
        pass

    async def commit(self, writes: Any = (), events: Any = ()) -> list[Any]:
        return []


async def _scheduler(**settings: Any) -> tuple[IngestScheduler, list[tuple[str, list[dict]]]]:
    config = Settings(**{"bus": "memory", "compute": "none", "admin_key": "sk_admin_" + "x" * 32,
                         "ingest_settle_s": 0.05, "ingest_max_delay_s": 2.0, **settings})
    catalog = MemoryCatalog()
    await catalog.connect()
    scheduler = IngestScheduler(catalog=catalog, vectors=None, store=None, bus=None, topics=None,  # type: ignore[arg-type]
                                settings=config, compute=None, publish=Publish())
    started: list[tuple[str, list[dict]]] = []

    def start(collection_id: str, namespace: str, task_id: str, entries: list[dict]) -> None:
        started.append((collection_id, entries))
        scheduler._running[collection_id] = asyncio.get_running_loop().create_future()  # type: ignore[assignment]  # runs until the test ends it
        scheduler._namespaces[collection_id] = namespace
    scheduler._start = start  # type: ignore[method-assign]
    return scheduler, started


async def _queue(scheduler: IngestScheduler, collection_id: str, *names: str, namespace: str = "acme") -> None:
    for name in names:
        await scheduler.catalog.insert(INGEST_QUEUE, f"{collection_id}|{name}", {
            "namespace": namespace, "collection_id": collection_id, "object": {"bucket": "b", "key": name, "size": 1},
            "correlation_id": None, "queued_at": time.time(), "claimed_by": None})
        scheduler.poke()


async def _schedule_until(scheduler: IngestScheduler, started: list, count: int, timeout_s: float) -> float:
    """Run the scheduler's loop (schedule, then wait for a poke) until `count` tasks started; the seconds it took."""
    begun = time.monotonic()
    while len(started) < count:
        assert time.monotonic() - begun < timeout_s, f"{len(started)} tasks started in {timeout_s}s, not {count}"
        scheduler._wake.clear()
        await scheduler.schedule()
        if len(started) < count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(scheduler._wake.wait(), timeout=0.25)
    return time.monotonic() - begun


async def test_one_object_in_an_idle_collection_starts_once_the_queue_is_quiet_not_after_max_delay() -> None:
    scheduler, started = await _scheduler()
    await _queue(scheduler, "col_a", "one.txt")
    took = await _schedule_until(scheduler, started, 1, timeout_s=1.0)
    assert took < 0.5  # the settle window (50 ms), not max_delay (2 s): woken by the scheduler's own timer
    [(collection_id, entries)] = started
    assert collection_id == "col_a" and [e["object"]["key"] for e in entries] == ["one.txt"]
    [task] = await scheduler.catalog.find(TASKS)
    assert task["objects"] == 1 and entries[0]["id"] in {e["id"] for e in await scheduler.catalog.find(
        INGEST_QUEUE, {"claimed_by": task["task_id"]})}


async def test_a_burst_still_arriving_waits_and_becomes_one_task_once_quiet() -> None:
    scheduler, started = await _scheduler()
    for i in range(20):  # one every 10 ms: never quiet for 50 ms until it ends
        await _queue(scheduler, "col_a", f"{i}.txt")
        await scheduler.schedule()
        await asyncio.sleep(0.01)
    assert started == []
    await _schedule_until(scheduler, started, 1, timeout_s=1.0)
    assert len(started[0][1]) == 20


async def test_a_burst_that_never_pauses_is_cut_at_max_delay() -> None:
    scheduler, started = await _scheduler(ingest_max_delay_s=0.3)
    begun = time.monotonic()
    i = 0
    while not started:
        assert time.monotonic() - begun < 1.0
        await _queue(scheduler, "col_a", f"{i}.txt")
        i += 1
        await scheduler.schedule()
        await asyncio.sleep(0.01)
    assert 0.25 < time.monotonic() - begun < 0.6
    assert 5 < len(started[0][1]) == i  # what had arrived by then


async def test_a_full_queue_starts_at_once_with_max_objects() -> None:
    scheduler, started = await _scheduler(ingest_max_objects=5)
    await _queue(scheduler, "col_a", *(f"{i}.txt" for i in range(7)))
    await scheduler.schedule()  # nothing quiet or old yet: full is enough
    assert [len(entries) for _, entries in started] == [5]


async def test_objects_arriving_while_the_collections_job_runs_wait_and_become_its_next_task() -> None:
    scheduler, started = await _scheduler()
    await _queue(scheduler, "col_a", "first.txt")
    await _schedule_until(scheduler, started, 1, timeout_s=1.0)
    await _queue(scheduler, "col_a", *(f"{i}.txt" for i in range(30)))
    await asyncio.sleep(0.1)  # quiet, but the collection's job runs
    scheduler.poke()
    await scheduler.schedule()
    assert len(started) == 1
    scheduler._running.pop("col_a").set_result(None)  # the job ends (and with it the collection's lease)
    await scheduler.catalog.delete("ingest_leases", "col_a")
    scheduler.poke()
    await _schedule_until(scheduler, started, 2, timeout_s=1.0)
    assert [len(entries) for _, entries in started] == [1, 30]


async def test_queues_of_other_collections_do_not_wait_for_each_other() -> None:
    scheduler, started = await _scheduler(ingest_max_jobs=3, ingest_max_jobs_per_namespace=3)
    await _queue(scheduler, "col_a", "a.txt")
    await _queue(scheduler, "col_b", "b.txt", namespace="globex")
    await _schedule_until(scheduler, started, 2, timeout_s=1.0)
    assert sorted(c for c, _ in started) == ["col_a", "col_b"]


async def test_looking_for_work_reads_a_few_rows_per_collection_however_long_the_queue() -> None:
    reads: list[tuple[int, int]] = []

    async def measure(size: int) -> tuple[int, int]:
        scheduler, _ = await _scheduler()
        await _queue(scheduler, "col_a", *(f"a{i}.txt" for i in range(size)))
        await _queue(scheduler, "col_b", *(f"b{i}.txt" for i in range(size)))
        find = scheduler.catalog.find
        calls = rows = 0

        async def counting(*args: Any, **kwargs: Any) -> list[dict]:
            nonlocal calls, rows
            found = await find(*args, **kwargs)
            calls, rows = calls + 1, rows + len(found)
            return found
        scheduler.catalog.find = counting  # type: ignore[method-assign]
        queues = await scheduler._pending()
        assert [(q.collection_id, q.namespace) for q in queues] == [("col_a", "acme"), ("col_b", "acme")]
        assert all(q.oldest <= q.newest for q in queues)
        return calls, rows

    for size in (10, 1000):
        reads.append(await measure(size))
    assert reads[0] == reads[1] == (7, 6)  # per collection: find it, its oldest, its newest; then no more


def test_a_queue_is_due_when_quiet_or_when_its_oldest_waited_max_delay() -> None:
    queue = PendingQueue("col_a", "acme", oldest=100.0, newest=100.5)
    assert queue.due(settle_s=0.05, max_delay_s=2.0) == pytest.approx(100.55)
    assert PendingQueue("col_a", "acme", oldest=100.0, newest=101.99).due(settle_s=0.05, max_delay_s=2.0) == 102.0
    assert PendingQueue("col_a", "acme", oldest=100.0).due(settle_s=0.05, max_delay_s=2.0) == pytest.approx(100.05)


async def test_the_reconciler_walks_each_claiming_task_requeues_vanished_ones_in_pages_and_clears_finished_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import functions.runtime.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "UNCLAIM_PAGE", 2)
    scheduler, _ = await _scheduler()
    catalog, old = scheduler.catalog, time.time() - 3600

    async def claimed(task_id: str, count: int, at: float) -> None:
        await catalog.upsert_many(INGEST_QUEUE, [(f"col_a|{task_id}-{i}", {
            "namespace": "acme", "collection_id": "col_a", "object": {"bucket": "b", "key": f"{task_id}-{i}", "size": 1},
            "queued_at": old, "claimed_by": task_id, "claimed_at": at}) for i in range(count)])
    await claimed("tsk_gone", 5, old)  # its task was never written: back to the queue, two per write
    await claimed("tsk_young", 2, time.time())  # claimed a moment ago: its task may be a write in flight
    await claimed("tsk_done", 3, old)  # finished, its entries left behind
    await catalog.insert(TASKS, "tsk_done", {"task_id": "tsk_done", "status": "COMPLETED", "collection_id": "col_a"})
    await _queue(scheduler, "col_a", "fresh.txt")

    fixed = await scheduler.reconcile()
    assert fixed["unclaimed"] == 5 and fixed["cleared"] == 3
    assert await catalog.count(INGEST_QUEUE, {"claimed_by": None}) == 6
    assert await catalog.count(INGEST_QUEUE, {"claimed_by": "tsk_young"}) == 2
    assert await catalog.count(INGEST_QUEUE, {"claimed_by": "tsk_done"}) == 0
