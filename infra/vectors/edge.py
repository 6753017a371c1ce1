"""The VectorIndex on Qdrant Edge (`qdrant-edge-py`): Qdrant's engine in-process, on local disk.

Layout under `path`, one Edge shard per collection:

    path/<collection>/spec.json   the named vectors (size, distance); the collection exists iff
                                  this file does (written last on create, removed first on delete)
    path/<collection>/shard/      the EdgeShard: segments, WAL, the engine's edge_config.json

The engine is synchronous, so its calls run in a worker thread (its updates and searches let go
of the GIL, so the event loop goes on meanwhile), but for a search on a mostly indexed shard, which
runs on the loop (see `INLINE_SEARCH_PENDING`). A lock per collection keeps one call at a time on a
shard and keeps create and delete apart from use. A shard opens on first use and stays open until
`close()`, which flushes it to disk. Updates go through the engine's write-ahead log and are
searchable when `upsert` returns: a segment the engine has not indexed yet is searched
exhaustively, so results are exact there. Vectors reach the engine as float lists made by one
`tolist()` per vector name and batch from the float32 matrix the checks built.

Edge has no background optimizer of its own: `optimize()` builds the HNSW index and vacuums
deleted points once a segment passes the engine's thresholds (and returns at once otherwise). It
keeps the GIL while it works, so the whole process, event loop included, waits for it (minutes for
a few 100k points of 384 dims on 2 CPUs). Writes never run it. This adapter runs it:

  - when `optimize(name)` is called (a bulk writer calls it once, at the end of its job);
  - in the background, per collection, once writes to it have been quiet for `optimize_quiet_s`,
    or sooner once `optimize_after_points` points were written or deleted since the last run,
    under the collection's lock like any other call. Opening a shard schedules one too, so
    deletes left unvacuumed by a previous process are vacuumed eventually.

`close()` drops the scheduled runs, waits for one already running (the engine cannot stop it),
then flushes and closes every shard: every acknowledged write is on disk, and the next open
schedules the optimization again.

The engine locks a shard's WAL, so only one process (one `EdgeVectorIndex`) may open a path.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import qdrant_edge as qe
import structlog

from events.errors import InvalidInput, NotFound, SluiceError, TransientError
from events.lifecycle import Health
from infra.vectors._validate import (
    Condition,
    Equals,
    check_collection_name,
    check_ids,
    check_points,
    check_same_spec,
    check_search,
    check_spec,
    parse_where,
)
from infra.vectors.base import Hit, Point, Vector, VectorIndex, VectorSpec

SPEC_FILE = "spec.json"
SHARD_DIR = "shard"
SPEC_FORMAT = 1
OPTIMIZE_QUIET_S = 30.0
"""Background optimization runs once a collection has had no write for this long: longer than the
gap between two output batches of an ingest job, so a job's writes are never interrupted by an
optimize that freezes the process (and with it the job's driver); searches meanwhile are exact
over the segments not yet indexed."""
OPTIMIZE_AFTER_POINTS = 100_000
"""... or once this many points were written or deleted since the last run, quiet or not."""
INLINE_SEARCH_PENDING = 10_000
"""A search runs on the event loop, not in a worker thread, while at most this many points were
written since the last optimize: the unindexed part is then small, the search takes about a
millisecond, and a thread's hop would add a tenth of that. Beyond it (an exhaustive scan of many
unindexed points) it runs in a thread, where the engine lets the loop go on."""

log = structlog.get_logger("sluice.vectors.edge")

T = TypeVar("T")

_DISTANCES = {"cosine": qe.Distance.Cosine, "euclid": qe.Distance.Euclid, "dot": qe.Distance.Dot}


@dataclass
class _Collection:
    shard: qe.EdgeShard
    spec: dict[str, VectorSpec]
    pending: int = 0  # points written or deleted since the last optimize (1 after opening: unknown)
    last_write: float = 0.0  # loop time of the last write
    optimizer: asyncio.Task[None] | None = None  # the scheduled background optimize
    due: asyncio.Event = field(default_factory=asyncio.Event)  # wakes it before the quiet deadline


class EdgeVectorIndex(VectorIndex):
    adapter_name = "qdrant-edge"

    def __init__(
        self,
        path: Path,
        *,
        optimize_quiet_s: float = OPTIMIZE_QUIET_S,
        optimize_after_points: int = OPTIMIZE_AFTER_POINTS,
    ) -> None:
        self._root = Path(path)
        self._open: dict[str, _Collection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._quiet_s = optimize_quiet_s
        self._after_points = optimize_after_points

    @property
    def path(self) -> Path:
        return self._root

    async def _connect(self) -> None:
        await _run(self._root.mkdir, parents=True, exist_ok=True)

    async def _close(self) -> None:
        # Scheduled runs end here; one inside the engine finishes first (`_run` waits for it).
        optimizers = [c.optimizer for c in self._open.values() if c.optimizer is not None]
        for task in optimizers:
            task.cancel()
        await asyncio.gather(*optimizers, return_exceptions=True)
        failures: list[SluiceError] = []
        for name in list(self._open):
            async with self._lock(name):  # waits for a call already running on this shard
                collection = self._open.pop(name, None)
                if collection is not None:
                    try:
                        await _run(_shut, name, collection.shard)
                    except SluiceError as exc:  # close the others all the same
                        failures.append(exc)
        if failures:
            raise failures[0]

    async def _health(self) -> Health:
        detail: dict[str, Any] = {
            "path": str(self._root),
            "open_collections": len(self._open),
            "writes_awaiting_optimize": sum(c.pending for c in self._open.values()),
        }
        if not (self._root.is_dir() and os.access(self._root, os.W_OK)):
            return Health(status="down", adapter=self.adapter_name, detail={**detail, "reason": "path not writable"})
        return Health(status="ok", adapter=self.adapter_name, detail=detail)

    # -- collections -----------------------------------------------------------------------------

    async def create_collection(self, name: str, vectors: Mapping[str, VectorSpec]) -> None:
        self._require_connected()
        check_collection_name(name)
        spec = check_spec(name, vectors)
        async with self._lock(name):
            self._require_connected()
            existing = self._open[name].spec if name in self._open else await _run(self._read_spec, name)
            if existing is not None:
                check_same_spec(name, existing, spec)
                return
            await _run(self._create, name, spec)

    async def collection_vectors(self, name: str) -> dict[str, VectorSpec] | None:
        self._require_connected()
        check_collection_name(name)
        async with self._lock(name):
            if name in self._open:
                return dict(self._open[name].spec)
            return await _run(self._read_spec, name)

    async def list_collections(self) -> list[str]:
        self._require_connected()
        return await _run(self._list)

    async def delete_collection(self, name: str) -> bool:
        self._require_connected()
        check_collection_name(name)
        async with self._lock(name):
            collection = self._open.pop(name, None)
            if collection is not None and collection.optimizer is not None:
                collection.optimizer.cancel()  # waiting for this lock or asleep: it never touches the shard
            return await _run(self._drop, name, collection)

    # -- points ----------------------------------------------------------------------------------

    async def upsert(self, name: str, points: Sequence[Point]) -> int:
        self._require_connected()
        check_collection_name(name)
        async with self._lock(name):
            collection = await self._collection(name)
            try:
                written = await _run(_upsert, name, collection, points)
            except asyncio.CancelledError:  # the batch may be written all the same
                self._wrote(name, collection, len(points))
                raise
            self._wrote(name, collection, written)
            return written

    async def optimize(self, name: str) -> None:
        self._require_connected()
        check_collection_name(name)
        async with self._lock(name):
            await self._optimize(name, await self._collection(name))

    async def search(self, name: str, vector_name: str, vector: Vector, *, limit: int = 10,
                     where: Mapping[str, Any] | None = None) -> list[Hit]:
        self._require_connected()
        check_collection_name(name)
        conditions = parse_where(where)
        async with self._lock(name):
            collection = await self._collection(name)
            if collection.pending <= INLINE_SEARCH_PENDING:
                return _search(name, collection, vector_name, vector, limit, conditions)
            return await _run(_search, name, collection, vector_name, vector, limit, conditions)

    async def count(self, name: str, where: Mapping[str, Any] | None = None) -> int:
        self._require_connected()
        check_collection_name(name)
        request = qe.CountRequest(exact=True, filter=_filter(parse_where(where)))
        async with self._lock(name):
            collection = await self._collection(name)
            return await _run(_engine_call, name, collection.shard.count, request)

    async def retrieve(self, name: str, ids: Sequence[str]) -> list[Point]:
        self._require_connected()
        check_collection_name(name)
        wanted = check_ids(ids)
        async with self._lock(name):
            collection = await self._collection(name)
            records = await _run(
                _engine_call, name, collection.shard.retrieve, wanted, with_payload=True, with_vector=True
            )
        found = {str(record.id): record for record in records}
        points = []
        for point_id in wanted:
            record = found.get(point_id)
            if record is not None:
                vectors = {vector_name: list(v) for vector_name, v in (record.vector or {}).items()}
                points.append(Point(id=str(record.id), vectors=vectors, payload=dict(record.payload or {})))
        return points

    async def delete_points(self, name: str, ids: Sequence[str]) -> int:
        self._require_connected()
        check_collection_name(name)
        wanted = check_ids(ids)
        async with self._lock(name):
            collection = await self._collection(name)
            # a list[str] is a list of PointId; the stub's List[PointId] only rejects it by invariance
            operation = qe.UpdateOperation.delete_points(cast("list[qe.PointId]", wanted))
            try:
                await _run(_engine_call, name, collection.shard.update, operation)
            finally:  # cancelled or not, the ids may be gone: vacuuming is due
                self._wrote(name, collection, len(wanted))
        return len(wanted)

    # -- background optimization (on the event loop) --------------------------------------------

    def _wrote(self, name: str, collection: _Collection, points: int) -> None:
        """Count a write and make sure a background optimize is scheduled. Call under the lock."""
        collection.pending += points
        collection.last_write = asyncio.get_running_loop().time()
        if collection.optimizer is None or collection.optimizer.done():
            collection.optimizer = asyncio.create_task(
                self._optimize_later(name, collection), name=f"edge-optimize-{name}"
            )
        if collection.pending >= self._after_points:
            collection.due.set()

    async def _optimize_later(self, name: str, collection: _Collection) -> None:
        """Wait until writes have been quiet (or enough piled up), then optimize under the lock."""
        loop = asyncio.get_running_loop()
        try:
            while collection.pending < self._after_points:
                wait = collection.last_write + self._quiet_s - loop.time()
                if wait <= 0:
                    break
                collection.due.clear()
                try:
                    await asyncio.wait_for(collection.due.wait(), wait)
                except TimeoutError:
                    pass
            async with self._lock(name):
                if self.connected and self._open.get(name) is collection and collection.pending:
                    await self._optimize(name, collection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a background task: report it, the next write retries
            log.warning("edge.optimize_failed", collection=name, error=f"{type(exc).__name__}: {exc}")
        finally:
            if collection.optimizer is asyncio.current_task():
                collection.optimizer = None

    async def _optimize(self, name: str, collection: _Collection) -> None:
        """Run the engine's optimizers now. Call under the collection's lock."""
        pending, collection.pending = collection.pending, 0
        try:
            await _run(_optimize, name, collection.shard)
        except BaseException:
            collection.pending += pending
            raise

    # -- files and shards (called in worker threads, under the collection's lock) ----------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _collection(self, name: str) -> _Collection:
        """The open collection; opens its shard on first use (and schedules a background optimize
        for whatever the last process left). Call under the collection's lock."""
        self._require_connected()  # close() may have run while this call waited for the lock
        collection = self._open.get(name)
        if collection is None:
            collection = await _run(self._load, name)
            self._wrote(name, collection, 1)
        return collection

    def _read_spec(self, name: str) -> dict[str, VectorSpec] | None:
        path = self._root / name / SPEC_FILE
        try:
            raw = json.loads(path.read_text())
            return {n: VectorSpec(size=v["size"], distance=v["distance"]) for n, v in raw["vectors"].items()}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SluiceError(f"vector collection {name!r}: {path} is unreadable: {exc}") from exc

    def _load(self, name: str) -> _Collection:
        spec = self._read_spec(name)
        if spec is None:
            raise NotFound(f"vector collection {name!r} does not exist", details={"collection": name})
        shard = _engine_call(name, qe.EdgeShard.load, str(self._root / name / SHARD_DIR))
        # Registered here rather than by the caller, which may have been cancelled meanwhile.
        self._open[name] = collection = _Collection(shard=shard, spec=spec)
        return collection

    def _create(self, name: str, spec: dict[str, VectorSpec]) -> _Collection:
        folder = self._root / name
        shard_dir = folder / SHARD_DIR
        if shard_dir.exists():  # left by a create or delete that did not finish: no spec, no collection
            shutil.rmtree(shard_dir)
        folder.mkdir(parents=True, exist_ok=True)
        config = qe.EdgeConfig(
            vectors={n: qe.EdgeVectorParams(size=s.size, distance=_DISTANCES[s.distance]) for n, s in spec.items()}
        )
        shard = _engine_call(name, qe.EdgeShard.create, str(shard_dir), config)
        try:
            _write_json(folder / SPEC_FILE, {
                "format": SPEC_FORMAT,
                "vectors": {n: {"size": s.size, "distance": s.distance} for n, s in spec.items()},
            })
        except BaseException:
            shard.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._open[name] = collection = _Collection(shard=shard, spec=spec)
        return collection

    def _drop(self, name: str, collection: _Collection | None) -> bool:
        folder = self._root / name
        if collection is not None:
            _engine_call(name, collection.shard.close)
        existed = (folder / SPEC_FILE).is_file()
        (folder / SPEC_FILE).unlink(missing_ok=True)  # from here on the collection is gone
        shutil.rmtree(folder, ignore_errors=True)
        return existed

    def _list(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(entry.name for entry in self._root.iterdir() if (entry / SPEC_FILE).is_file())


# -- engine calls (worker threads) -----------------------------------------------------------------


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in a worker thread. An engine call cannot be interrupted, so a cancelled
    caller still waits for it to end: the collection's lock is never released while a call runs on
    its shard, and a shard opened for a cancelled caller is registered all the same."""
    call = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        await asyncio.wait({call})
        raise


def _upsert(name: str, collection: _Collection, points: Sequence[Point]) -> int:
    stacked = check_points(name, collection.spec, points)  # the whole batch, before any of it is written
    if not points:
        return 0
    # The binding reads a vector as a sequence of Python floats: one `tolist()` per vector name
    # for the batch is the cheapest way there (a numpy row is read element by element, slower).
    vectors: list[dict[str, Any]] = [{} for _ in points]
    for vector_name, checked in stacked.items():
        for row, values in zip(checked.rows, checked.matrix.tolist(), strict=True):
            vectors[row][vector_name] = values
    batch = [
        qe.Point(p.id, v, p.payload if type(p.payload) is dict else dict(p.payload))
        for p, v in zip(points, vectors, strict=True)
    ]
    _engine_call(name, collection.shard.update, qe.UpdateOperation.upsert_points(batch))
    return len(points)


def _search(
    name: str,
    collection: _Collection,
    vector_name: str,
    vector: Vector,
    limit: int,
    conditions: list[Condition],
) -> list[Hit]:
    query = check_search(name, collection.spec, vector_name, vector, limit)
    request = qe.SearchRequest(
        query=qe.Query.Nearest(query.tolist(), using=vector_name),
        limit=limit,
        filter=_filter(conditions),
        with_payload=True,
        with_vector=False,
    )
    scored = _engine_call(name, collection.shard.search, request)
    return [Hit(id=str(p.id), score=p.score, payload=dict(p.payload or {})) for p in scored]


def _optimize(name: str, shard: qe.EdgeShard) -> None:
    # Edge optimizes only when asked (a no-op below thresholds). Segments an optimization replaced
    # stay on disk and mapped in memory until the next flush: flush when it did work, or a
    # long-open index at 100k points holds ~1.6 GB of dead segments (bench/vector_index.py).
    if _engine_call(name, shard.optimize):
        _engine_call(name, shard.flush)


def _shut(name: str, shard: qe.EdgeShard) -> None:
    _engine_call(name, shard.flush)
    _engine_call(name, shard.close)


def _filter(conditions: list[Condition]) -> qe.Filter | None:
    if not conditions:
        return None
    must: list[qe.ConditionType] = []
    for c in conditions:
        if isinstance(c, Equals):
            # The binding reads a Python bool as the integer 0 or 1 (bool is an int); numpy's bool
            # is not an int, so it reaches the engine as a boolean. The stub leaves numpy's bool out.
            value = np.bool_(c.value) if isinstance(c.value, bool) else c.value
            must.append(qe.FieldCondition(key=c.key, match=qe.MatchValue(cast("str | int | bool", value))))
        else:
            must.append(qe.FieldCondition(key=c.key, match=qe.MatchAny(cast("list[str] | list[int]", list(c.values)))))
    return qe.Filter(must=must)


def _engine_call(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    with _engine_errors(name):
        return fn(*args, **kwargs)


@contextmanager
def _engine_errors(name: str) -> Iterator[None]:
    """The binding raises plain `Exception` (or `ValueError`) with the engine's message."""
    try:
        yield
    except SluiceError:
        raise
    except Exception as exc:
        text = str(exc)
        details = {"collection": name, "engine": text}
        if isinstance(exc, ValueError) or "dimension error" in text or "vector name" in text:
            raise InvalidInput(f"qdrant-edge refused input for collection {name!r}: {text}", details=details) from exc
        if "WouldBlock" in text:
            raise TransientError(
                f"qdrant-edge shard of collection {name!r} is locked by another process: {text}", details=details
            ) from exc
        raise SluiceError(f"qdrant-edge failed on collection {name!r}: {text}", details=details) from exc


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never a part."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
