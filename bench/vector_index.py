"""Upsert throughput, search latency and recall of the VectorIndex adapters, measured in one run.

    .venv/bin/python bench/vector_index.py [--points 100000] [--dim 384] [--batch 1000] [--queries 200]
        [--recall-queries 50] [--adapters edge,bare,qdrant-local] [--points-local N] [--seed 0]
        [--data uniform|lowrank] [--rank 32]
        [--qdrant-url URL] [--qdrant-api-key KEY]

Adapters, each used through the port (`connect()`, `create_collection`, `upsert`, `optimize`,
`count`, `search`, `close()`), each in its own temporary folder, removed at the end:

  edge           `EdgeVectorIndex`: Qdrant Edge (qdrant-edge-py), in-process, on disk
  bare           not the port: qdrant-edge used directly, as its own docs show, on the same points
                 (an `EdgeShard`, `update` per batch, one `optimize()` at the end, `search` with the
                 same request the port sends): what `edge` is measured against
  qdrant-local   `QdrantVectorIndex(path=...)`: qdrant-client's local mode, on disk (exact search)
  qdrant-memory  `QdrantVectorIndex(location=":memory:")`: local mode in memory (not in the default)
  qdrant-server  `QdrantVectorIndex(url=...)`: a Qdrant server; added to the default list when
                 `--qdrant-url` or SLUICE_QDRANT_URL is set (its collection is deleted at the end)

The data: `--points` deterministic random unit vectors (numpy, `--seed`) in one named vector
("text_embedding", cosine), payload {"document_id", "object_id"}, ids from `point_id(...)`.
`--data uniform` (the default) draws them uniformly on the sphere: the hardest case for an HNSW
index, since every point is nearly as far from a query as its nearest neighbours are. `--data
lowrank` draws them, and the queries, from a `--rank`-dimensional subspace plus a little noise,
closer to what text embeddings look like to an index. The
local-mode adapters may be given fewer points (`--points-local`, the first N of the same vectors);
the output then says so, and their figures are per point (points/s) or size-dependent (latency).

Upsert: batches of `--batch` through the async `upsert` (vectors as float32 numpy rows), then one
`optimize` (a no-op but for Edge); only the `upsert` and `optimize` awaits are timed (building the
`Point` objects is not), and upsert/s counts both: points written and indexed, ready to search.
`count()` must equal the number of points afterwards. For `bare`, each batch's timed part is building
its `qdrant_edge.Point`s from the same rows (one `tolist()`) and `update`, then one `optimize()`.
Search: a few warm-up queries, then `--queries` random unit vectors (float lists), limit 10, one at a
time; p50 and p95 of each `search` await (of each `shard.search` call for `bare`); for `edge`, then
the same queries again, each through the port and straight to its shard in turn. With both `edge`
and `bare` run, the port's cost is printed against the targets: upsert/s >= 0.9x bare, search p50 at
most 0.2 ms above bare; beside them the CPU seconds each used to upsert, which other load on the
machine skews less than wall time (the optimize dominates both, and is multi-threaded).
Recall@10: the first `--recall-queries` of those queries against the exact top 10 by numpy (cosine
on unit vectors = dot product). Peak RSS: the growth of the process's resident set
high-water mark while the adapter ran (reset per adapter through /proc/self/clear_refs where Linux
allows it; otherwise ru_maxrss, which only counts growth beyond earlier peaks); memory-mapped files
count in it. Disk: the adapter's folder while it is still open (after the searches) and after
`close()`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import qdrant_edge as qe

from infra.vectors import EdgeVectorIndex, Hit, Point, QdrantVectorIndex, VectorIndex, VectorSpec, point_id

VECTOR = "text_embedding"
LIMIT = 10
WARMUP_QUERIES = 3
ADAPTERS = ("edge", "bare", "qdrant-local", "qdrant-memory", "qdrant-server")
LOCAL_MODE = ("qdrant-local", "qdrant-memory")
DESCRIPTIONS = {
    "edge": "EdgeVectorIndex (qdrant-edge-py, on disk)",
    "bare": "qdrant-edge-py used directly, without the port (on disk)",
    "qdrant-local": "QdrantVectorIndex(path=...) (qdrant-client local mode, on disk)",
    "qdrant-memory": 'QdrantVectorIndex(location=":memory:") (qdrant-client local mode)',
    "qdrant-server": "QdrantVectorIndex(url=...) (Qdrant server)",
}


UPSERT_TARGET = 0.9
"""edge upsert/s over bare upsert/s, at least."""
SEARCH_P50_TARGET_MS = 0.2
"""edge search p50 minus bare search p50, at most."""


class BenchFailure(RuntimeError):
    """An adapter did not do what the port promises (a count or an id is wrong)."""


@dataclass
class Result:
    adapter: str
    points: int
    upsert_s: float = 0.0  # the batches and the optimize
    optimize_s: float = 0.0
    upsert_cpu_s: float = 0.0  # CPU time of this process over the same span (all its threads)
    same_shard_ms: tuple[float, float] | None = None  # edge: (port p50, engine p50) on the port's own shard
    batch_s: list[float] = field(default_factory=list)
    search_s: list[float] = field(default_factory=list)
    recall: float = 0.0
    recall_min: float = 0.0
    peak_rss_mb: float | None = None
    disk_open_mb: float | None = None
    disk_mb: float | None = None
    close_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def upsert_rate(self) -> float:
        return self.points / self.upsert_s

    @property
    def write_rate(self) -> float:
        """Points/s of the batches alone, without the optimize."""
        return self.points / max(self.upsert_s - self.optimize_s, 1e-9)

    def search_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.search_s) * 1000, q))


# -- data ------------------------------------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def lowrank_vectors(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """Unit vectors near the span of `basis` (rank x dim): a random mix of its rows, plus noise
    of about a tenth of the signal's norm."""
    rank, dim = basis.shape
    x = rng.standard_normal((n, rank), dtype=np.float32) @ basis
    x += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.1 * np.sqrt(rank / dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def dataset(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, timed queries, warm-up queries), the same for the same arguments."""
    rng = np.random.default_rng(args.seed)
    if args.data == "uniform":
        return (unit_vectors(rng, args.points, args.dim), unit_vectors(rng, args.queries, args.dim),
                unit_vectors(rng, WARMUP_QUERIES, args.dim))
    basis = rng.standard_normal((args.rank, args.dim), dtype=np.float32)
    return (lowrank_vectors(rng, basis, args.points), lowrank_vectors(rng, basis, args.queries),
            lowrank_vectors(rng, basis, WARMUP_QUERIES))


def exact_top(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row i: the indices of the k points nearest to query i by cosine, best first."""
    sims = queries @ points.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


# -- memory ----------------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakRss:
    """Growth of the resident set's high-water mark from `start()` to `peak_mb()`."""

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.reset = True
        except OSError:
            self.reset = False
        base_kb = _status_kb("VmRSS") if self.reset else None
        if base_kb is None:
            self.reset = False
            base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        self.base_kb = base_kb

    def peak_mb(self) -> float:
        peak = _status_kb("VmHWM") if self.reset else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - self.base_kb) / 1024


def folder_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total / 2**20


# -- one adapter -----------------------------------------------------------------------------------


def make_index(adapter: str, folder: Path, args: argparse.Namespace) -> VectorIndex:
    if adapter == "edge":
        return EdgeVectorIndex(folder / "edge")
    if adapter == "qdrant-local":
        return QdrantVectorIndex(path=str(folder / "qdrant-local"))
    if adapter == "qdrant-memory":
        return QdrantVectorIndex(location=":memory:")
    return QdrantVectorIndex(url=args.qdrant_url, api_key=args.qdrant_api_key)


async def bench_adapter(
    adapter: str,
    n: int,
    args: argparse.Namespace,
    vectors: np.ndarray,
    ids: list[str],
    queries: np.ndarray,
    warmups: np.ndarray,
    truth: np.ndarray,
) -> Result:
    result = Result(adapter=adapter, points=n)
    collection = f"bench-{uuid.uuid4().hex[:10]}"
    index_of = {ids[i]: i for i in range(n)}
    memory = PeakRss()
    with tempfile.TemporaryDirectory(prefix=f"sluice-bench-{adapter}-") as tmp:
        folder = Path(tmp)
        memory.start()
        index = make_index(adapter, folder, args)
        await index.connect()
        try:
            await index.create_collection(collection, {VECTOR: VectorSpec(size=args.dim, distance="cosine")})

            acknowledged = 0
            cpu_began = cpu_seconds()
            for start in range(0, n, args.batch):
                stop = min(start + args.batch, n)
                batch = [Point(ids[i], {VECTOR: vectors[i]}, payload(i)) for i in range(start, stop)]
                started = time.perf_counter()
                acknowledged += await index.upsert(collection, batch)
                result.batch_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            await index.optimize(collection)
            result.optimize_s = time.perf_counter() - started
            result.upsert_cpu_s = cpu_seconds() - cpu_began  # building the Points too: a little more
            result.upsert_s = sum(result.batch_s) + result.optimize_s
            counted = await index.count(collection)
            if acknowledged != n or counted != n:
                raise BenchFailure(
                    f"{adapter}: upserted {n} points in batches of {args.batch}; upsert acknowledged "
                    f"{acknowledged}, count() says {counted}"
                )

            for q in warmups:
                await index.search(collection, VECTOR, q.tolist(), limit=LIMIT)
            query_lists = [q.tolist() for q in queries]
            hits_of: list[list[Hit]] = []
            for q in query_lists:
                started = time.perf_counter()
                hits = await index.search(collection, VECTOR, q, limit=LIMIT)
                result.search_s.append(time.perf_counter() - started)
                hits_of.append(hits)

            check_recall(result, hits_of, index_of, truth)

            if adapter == "edge":
                shard = index._open[collection].shard  # type: ignore[attr-defined]
                info = _edge_info(shard)
                if info:
                    result.notes.append(info)
                result.same_shard_ms = await same_shard(index, collection, shard, query_lists)
            note_memory(result, memory)
            if adapter in ("edge", "qdrant-local"):
                result.disk_open_mb = folder_mb(folder)
            if adapter == "qdrant-server":
                await index.delete_collection(collection)
        finally:
            started = time.perf_counter()
            await index.close()
            result.close_s = time.perf_counter() - started
        if adapter in ("edge", "qdrant-local"):
            result.disk_mb = folder_mb(folder)
    return result


def payload(i: int) -> dict[str, object]:
    return {"document_id": f"doc-{i // 10}", "object_id": i}


def check_recall(result: Result, hits_of: list[list[Hit]], index_of: dict[str, int], truth: np.ndarray) -> None:
    """Every hit is a point that was upserted, with its payload; recall@10 against `truth`."""
    adapter = result.adapter
    recalls = []
    for row, hits in enumerate(hits_of[: len(truth)]):
        found = []
        for hit in hits:
            i = index_of.get(hit.id)
            if i is None:
                raise BenchFailure(f"{adapter}: search returned id {hit.id}, which was never upserted")
            if hit.payload.get("object_id") != i or hit.payload.get("document_id") != f"doc-{i // 10}":
                raise BenchFailure(f"{adapter}: point {hit.id} (object {i}) came back with payload {hit.payload}")
            found.append(i)
        if len(found) != LIMIT:
            raise BenchFailure(f"{adapter}: query {row} returned {len(found)} hits, asked for {LIMIT}")
        recalls.append(len(set(found) & set(truth[row].tolist())) / LIMIT)
    result.recall, result.recall_min = float(np.mean(recalls)), float(np.min(recalls))


def note_memory(result: Result, memory: PeakRss) -> None:
    result.peak_rss_mb = memory.peak_mb()
    anon, mapped = _status_kb("RssAnon"), _status_kb("RssFile")
    if anon is not None and mapped is not None:
        result.notes.append(
            f"process RSS before close(): {anon / 1024:.0f} MB anonymous, {mapped / 1024:.0f} MB file-backed (mmap)"
        )


def bench_bare(
    n: int,
    args: argparse.Namespace,
    vectors: np.ndarray,
    ids: list[str],
    queries: np.ndarray,
    warmups: np.ndarray,
    truth: np.ndarray,
) -> Result:
    """qdrant-edge without the port: the same points, batches and searches, one optimize at the end."""
    result = Result(adapter="bare", points=n)
    index_of = {ids[i]: i for i in range(n)}
    memory = PeakRss()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-bare-") as tmp:
        folder = Path(tmp)
        memory.start()
        config = qe.EdgeConfig(vectors={VECTOR: qe.EdgeVectorParams(size=args.dim, distance=qe.Distance.Cosine)})
        shard = qe.EdgeShard.create(str(folder / "shard"), config)
        try:
            cpu_began = cpu_seconds()
            for start in range(0, n, args.batch):
                stop = min(start + args.batch, n)
                rows, payloads = vectors[start:stop], [payload(i) for i in range(start, stop)]
                started = time.perf_counter()
                batch = [qe.Point(ids[start + k], {VECTOR: row}, payloads[k]) for k, row in enumerate(rows.tolist())]
                shard.update(qe.UpdateOperation.upsert_points(batch))
                result.batch_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            shard.optimize()
            result.optimize_s = time.perf_counter() - started
            result.upsert_cpu_s = cpu_seconds() - cpu_began
            result.upsert_s = sum(result.batch_s) + result.optimize_s
            counted = shard.count(qe.CountRequest(exact=True))
            if counted != n:
                raise BenchFailure(f"bare: upserted {n} points in batches of {args.batch}; count() says {counted}")

            for q in warmups:
                shard.search(search_request(q.tolist()))
            scored_of = []
            for q in [q.tolist() for q in queries]:
                started = time.perf_counter()
                scored = shard.search(search_request(q))
                result.search_s.append(time.perf_counter() - started)
                scored_of.append(scored)
            hits_of = [[Hit(id=str(p.id), score=p.score, payload=dict(p.payload or {})) for p in s] for s in scored_of]
            check_recall(result, hits_of, index_of, truth)
            info = _edge_info(shard)
            if info:
                result.notes.append(info)
            note_memory(result, memory)
            result.disk_open_mb = folder_mb(folder)
        finally:
            started = time.perf_counter()
            shard.flush()
            shard.close()
            result.close_s = time.perf_counter() - started
        result.disk_mb = folder_mb(folder)
    return result


def search_request(q: list[float]) -> qe.SearchRequest:
    return qe.SearchRequest(query=qe.Query.Nearest(q, using=VECTOR), limit=LIMIT, with_payload=True, with_vector=False)


async def same_shard(index: VectorIndex, collection: str, shard: qe.EdgeShard, queries: list[list[float]]) -> tuple[float, float]:
    """p50 of the port's search and of the engine's own `shard.search` on the port's shard, query
    by query in turn: the port's cost alone, without another HNSW graph or a change of load. The
    second search of a query finds the graph nodes it visits in the CPU cache, so which goes first
    alternates."""
    port_s, engine_s = [], []
    for i, q in enumerate(queries):
        for port_turn in (True, False) if i % 2 else (False, True):
            started = time.perf_counter()
            if port_turn:
                await index.search(collection, VECTOR, q, limit=LIMIT)
                port_s.append(time.perf_counter() - started)
            else:
                shard.search(search_request(q))
                engine_s.append(time.perf_counter() - started)
    return statistics.median(port_s) * 1000, statistics.median(engine_s) * 1000


def _edge_info(shard: qe.EdgeShard) -> str | None:
    """The Edge shard's own account (segments, indexed vectors): a private peek, for the notes."""
    try:
        info = shard.info()
    except Exception:  # noqa: BLE001 - diagnostics only
        return None
    return (f"engine: {info.segments_count} segment(s), {info.indexed_vectors_count} of "
            f"{info.points_count} vectors in an HNSW index (the rest searched exhaustively)")


# -- report ----------------------------------------------------------------------------------------


def print_table(results: list[Result]) -> None:
    print(f"{'adapter':14} {'points':>8} {'upsert/s':>9} {'batch p50':>10} {'batch max':>10} "
          f"{'search p50':>11} {'p95':>8} {'recall@10':>10} {'peak RSS':>9} {'disk open':>10} {'closed':>9}")
    for r in results:
        rss = "-" if r.peak_rss_mb is None else f"+{r.peak_rss_mb:.0f}MB"
        disk_open = "-" if r.disk_open_mb is None else f"{r.disk_open_mb:.1f}MB"
        disk = "-" if r.disk_mb is None else f"{r.disk_mb:.1f}MB"
        print(f"{r.adapter:14} {r.points:8d} {r.upsert_rate:9.0f} {statistics.median(r.batch_s) * 1000:8.1f}ms "
              f"{max(r.batch_s) * 1000:8.1f}ms {r.search_ms(50):9.2f}ms {r.search_ms(95):6.2f}ms "
              f"{r.recall:10.3f} {rss:>9} {disk_open:>10} {disk:>9}")


def print_targets(results: list[Result]) -> None:
    """The port against the bare engine, with the targets, when both ran at the same size."""
    by_name = {r.adapter: r for r in results}
    port, bare = by_name.get("edge"), by_name.get("bare")
    if port is None or bare is None or port.points != bare.points:
        return
    upsert = port.upsert_rate / bare.upsert_rate
    p50 = port.search_ms(50) - bare.search_ms(50)
    print(f"edge upsert / bare upsert = {upsert:.2f}x   (target >= {UPSERT_TARGET}x: "
          f"{'met' if upsert >= UPSERT_TARGET else 'MISSED'}; written and optimized, points/s)")
    print(f"edge search p50 - bare search p50 = {p50:+.2f} ms   (target <= {SEARCH_P50_TARGET_MS} ms: "
          f"{'met' if p50 <= SEARCH_P50_TARGET_MS else 'MISSED'})")
    if port.upsert_cpu_s and bare.upsert_cpu_s:
        print(f"  CPU: edge used {port.upsert_cpu_s:.1f} CPU-s to upsert, bare {bare.upsert_cpu_s:.1f}: "
              f"bare / edge = {bare.upsert_cpu_s / port.upsert_cpu_s:.2f}x (less sensitive to other load than wall time)")
    if port.same_shard_ms is not None:
        ported, engine = port.same_shard_ms
        print(f"  on the port's own shard, query by query: port p50 {ported:.2f} ms, shard.search p50 {engine:.2f} ms: "
              f"{ported - engine:+.2f} ms (the port's cost without another graph or another load)")
    print(f"  writes alone: edge / bare = {port.write_rate / bare.write_rate:.2f}x "
          f"({port.upsert_s - port.optimize_s:.1f} s vs {bare.upsert_s - bare.optimize_s:.1f} s); "
          f"optimize {port.optimize_s:.1f} s vs {bare.optimize_s:.1f} s; "
          f"search p95 {port.search_ms(95) - bare.search_ms(95):+.2f} ms")


def print_ratios(results: list[Result]) -> None:
    if len(results) < 2:
        return
    first = results[0]
    for other in results[1:]:
        sized = "" if other.points == first.points else f"   (at {first.points} vs {other.points} points)"
        print(f"{first.adapter} upsert / {other.adapter} upsert = {first.upsert_rate / other.upsert_rate:.2f}x   (points/s)")
        print(f"{other.adapter} p50 / {first.adapter} p50 = {other.search_ms(50) / first.search_ms(50):.2f}x{sized}")
        print(f"{other.adapter} p95 / {first.adapter} p95 = {other.search_ms(95) / first.search_ms(95):.2f}x{sized}")


def versions() -> str:
    found = []
    for dist in ("qdrant-edge-py", "qdrant-client", "numpy"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} missing")
    return ", ".join(found)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows here, and skews the timings."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--recall-queries", type=int, default=50, help="how many of the queries are checked for recall")
    parser.add_argument("--adapters", default=None,
                        help=f"comma-separated, from {', '.join(ADAPTERS)} "
                             "(default: edge,bare,qdrant-local, plus qdrant-server when a URL is given)")
    parser.add_argument("--points-local", type=int, default=None,
                        help="cap the points given to qdrant-client's local mode (default: --points)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=("uniform", "lowrank"), default="uniform",
                        help="uniform on the sphere (default), or near a --rank-dimensional subspace")
    parser.add_argument("--rank", type=int, default=32, help="for --data lowrank (default 32)")
    parser.add_argument("--qdrant-url", default=os.environ.get("SLUICE_QDRANT_URL") or None,
                        help="a Qdrant server for qdrant-server (default: $SLUICE_QDRANT_URL)")
    parser.add_argument("--qdrant-api-key", default=os.environ.get("SLUICE_QDRANT_API_KEY") or None,
                        help="(default: $SLUICE_QDRANT_API_KEY)")
    args = parser.parse_args(argv)
    if args.adapters is None:
        args.adapters = ["edge", "bare", "qdrant-local"] + (["qdrant-server"] if args.qdrant_url else [])
    else:
        args.adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    unknown = [a for a in args.adapters if a not in ADAPTERS]
    if unknown or not args.adapters or len(set(args.adapters)) != len(args.adapters):
        parser.error(f"--adapters: {','.join(args.adapters)!r}; use distinct names from {', '.join(ADAPTERS)}")
    if "qdrant-server" in args.adapters and not args.qdrant_url:
        parser.error("qdrant-server needs --qdrant-url or SLUICE_QDRANT_URL")
    for name in ("points", "dim", "batch", "queries", "rank"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.points < LIMIT:
        parser.error(f"--points must be at least {LIMIT}")
    if args.points_local is not None and not args.points_local >= LIMIT:
        parser.error(f"--points-local must be at least {LIMIT}")
    args.recall_queries = max(1, min(args.recall_queries, args.queries))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


async def run(args: argparse.Namespace) -> int:
    sizes = {a: min(args.points, args.points_local or args.points) if a in LOCAL_MODE else args.points for a in args.adapters}
    started = time.perf_counter()
    vectors, queries, warmups = dataset(args)
    ids = [point_id("bench", str(i)) for i in range(args.points)]
    truths = {n: exact_top(vectors[:n], queries[: args.recall_queries], LIMIT) for n in set(sizes.values())}
    data_s = time.perf_counter() - started

    print(f"machine      : {cpu_name()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
    print(f"versions     : {versions()}")
    kind = "uniform on the sphere" if args.data == "uniform" else f"near a rank-{args.rank} subspace"
    print(f"data         : {args.points} random unit vectors x {args.dim} dims, {kind} (seed {args.seed}), "
          f"vector {VECTOR!r}, cosine; batches of {args.batch}; {data_s:.1f} s to generate + exact top-{LIMIT}")
    print(f"queries      : {WARMUP_QUERIES} warm-up, then {args.queries} timed (limit {LIMIT}); "
          f"recall@{LIMIT} over the first {args.recall_queries} against numpy brute force")
    for adapter in args.adapters:
        target = f" at {args.qdrant_url}" if adapter == "qdrant-server" else ""
        print(f"{adapter:13}: {DESCRIPTIONS[adapter]}{target}")
    for adapter, n in sizes.items():
        if n != args.points:
            print(f"NOTE         : {adapter} ran with {n} points (--points-local), not {args.points}: "
                  "compare per point (upsert/s); its latency is at the smaller size")
    print()

    results: list[Result] = []
    for adapter in args.adapters:
        n = sizes[adapter]
        began, cpu_began, load_began = time.perf_counter(), cpu_seconds(), load_average()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Local mode is not recommended")
            if adapter == "bare":
                result = bench_bare(n, args, vectors, ids, queries, warmups, truths[n])
            else:
                result = await bench_adapter(adapter, n, args, vectors, ids, queries, warmups, truths[n])
        wall, cpu = time.perf_counter() - began, cpu_seconds() - cpu_began
        print(f"{adapter:13}: {n} points upserted in {result.upsert_s:.1f} s "
              f"({result.upsert_s - result.optimize_s:.1f} s of writes, {result.optimize_s:.1f} s to optimize), count() = {n}; "
              f"{args.queries} searches; close {result.close_s:.2f} s; {wall:.1f} s in all", flush=True)
        print(f"{'':13}  this process used {cpu:.0f} CPU-s in those {wall:.0f} s; "
              f"1-min load average {load_began} at the start, {load_average()} at the end ({os.cpu_count()} CPUs)")
        for note in result.notes:
            print(f"{'':13}  {note}")
        results.append(result)

    print()
    print_table(results)
    print()
    for r in results:
        print(f"{r.adapter:13}: recall@{LIMIT} mean {r.recall:.3f}, min {r.recall_min:.2f} over {len(truths[r.points])} queries")
    print_ratios(results)
    print_targets(results)
    if any(a in LOCAL_MODE for a in args.adapters):
        print("(qdrant-client local mode searches exhaustively: its latency grows with the number of points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
