"""Query latency: `feature_search` over REST against the same embedding and search in-process.

    .venv/bin/python bench/query.py [--docs 300] [--requests 300] [--plugin text_embedding] [--concurrency 1 16]

1. server: `sluice up` in its own process (fresh data dir, local Ray), a collection with the
   plugin (the builtin `text_embedding`: all-MiniLM-L6-v2 on ONNX Runtime), `--docs` short
   paragraphs of Debian's license texts dropped into its bucket and ingested; the collection's
   plugin version is deployed on Ray Serve (one replica). Queries go over HTTP (keep-alive) to
   `POST /v1/namespaces/bench/retrievers/feature_search` with `{"text": ...}`: REST → deployment
   handle → replica (batched) → vector index → documents.
2. in-process: the same plugin version (its archive, downloaded from the server), its steps built
   in this process, the same paragraphs embedded into a private qdrant-edge index; each query is
   embedded by those steps (one call per query, in a thread) and searched there. The same again
   with the steps in a confined plugin host (as replicas run them): the difference is what the
   sandbox adds to a query (target <= 1 ms at p50).

For each concurrency, both run the same queries (`--requests` of them, after a warm-up) with that
many clients at once, and it prints p50/p99 latency, throughput, and the REST overhead (REST −
in-process) at p50 and p99. The target is a p50 overhead <= 5 ms. The two sides run one after the
other on the same machine; ratios and differences are within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.server import ADMIN, Server  # noqa: E402

NAMESPACE, BUCKET, COLLECTION = "bench", "bench-docs", "bench"
LICENSES = Path("/usr/share/common-licenses")


def paragraphs(count: int) -> list[str]:
    """Distinct paragraphs of 80–900 characters (one chunk each) from the license texts."""
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(LICENSES.glob("*")):
        if not path.is_file():
            continue
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            text = " ".join(block.split())
            if 80 <= len(text) <= 900 and text not in seen:
                seen.add(text)
                out.append(text)
    if len(out) < count:
        raise SystemExit(f"only {len(out)} paragraphs under {LICENSES}; ask for fewer --docs")
    random.Random(7).shuffle(out)
    return out[:count]


def queries_for(docs: list[str], count: int) -> list[str]:
    """Short queries: 3–7 consecutive words of a document."""
    rng = random.Random(11)
    out = []
    for _ in range(count):
        words = rng.choice(docs).split()
        start = rng.randrange(max(1, len(words) - 7))
        out.append(" ".join(words[start:start + rng.randint(3, 7)]))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_clients(call, queries: list[str], concurrency: int) -> tuple[list[float], float]:
    """Latencies (ms) of every query, `concurrency` at a time; and the wall time (s)."""
    latencies: list[float] = []
    pending = list(queries)

    async def client() -> None:
        while pending:
            q = pending.pop()
            started = time.perf_counter()
            await call(q)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    return latencies, time.perf_counter() - started


async def prepare_server(server: Server, data_dir: Path, docs: list[str], plugin: str) -> tuple[dict, bytes]:
    """Namespace, collection (its version deploys), the docs dropped and ingested; the archive."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=300) as client:
        r = await client.post("/v1/namespaces", json={"namespace_name": NAMESPACE})
        assert r.status_code == 201, r.text
        r = await client.post(f"/v1/namespaces/{NAMESPACE}/collections", json={
            "collection_name": COLLECTION, "source": {"bucket": BUCKET},
            "feature_extractor": {"feature_extractor_name": plugin}})
        assert r.status_code == 201, r.text
        collection = r.json()
        drop = data_dir / "drop" / NAMESPACE / BUCKET
        drop.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(docs):
            (drop / f".doc-{i:05d}.txt").write_text(text)
            os.replace(drop / f".doc-{i:05d}.txt", drop / f"doc-{i:05d}.txt")
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            detail = (await client.get(f"/v1/namespaces/{NAMESPACE}/collections/{collection['collection_id']}")).json()
            if detail["document_count"] >= len(docs):
                break
            await asyncio.sleep(1)
        else:
            raise SystemExit(f"ingest did not finish: {detail['document_count']} of {len(docs)} documents")
        plugin_id = collection["feature_extractor"]["plugin_id"]
        while True:
            status = (await client.get(f"/v1/namespaces/{NAMESPACE}/plugins/{plugin_id}/status")).json()
            if status["status"] == "DEPLOYED":
                break
            if status["status"] in ("FAILED", "NOT_DEPLOYED"):
                raise SystemExit(f"deployment {status['status']}: {status.get('error') or status.get('reason')}")
            await asyncio.sleep(0.5)
        archive = (await client.get(f"/v1/namespaces/{NAMESPACE}/plugins/{plugin_id}/source")).content
        version = (await client.get(f"/v1/namespaces/{NAMESPACE}/plugins/{plugin_id}")).json()
        return {**collection, "plugin": version, "deployment": status}, archive


async def rest_side(server: Server, collection: dict, queries: list[str], concurrencies: list[int], warmup: int) -> dict:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    results: dict[int, dict] = {}
    limits = httpx.Limits(max_connections=max(concurrencies), max_keepalive_connections=max(concurrencies))
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120, limits=limits) as client:
        server_ms: list[dict] = []

        async def call(q: str) -> None:
            r = await client.post(f"/v1/namespaces/{NAMESPACE}/retrievers/feature_search",
                                  json={"collection_id": collection["collection_id"], "query": {"text": q}, "limit": 10})
            if r.status_code != 200:
                raise SystemExit(f"feature_search answered {r.status_code}: {r.text}")
            server_ms.append(r.json()["timings"])

        await run_clients(call, queries[:warmup], 4)
        for c in concurrencies:
            server_ms.clear()
            latencies, wall = await run_clients(call, list(queries), c)
            results[c] = {"latencies": latencies, "wall": wall,
                          "embed_ms": statistics.median(t["embed_ms"] for t in server_ms),
                          "search_ms": statistics.median(t["search_ms"] for t in server_ms),
                          "server_ms": statistics.median(t["total_ms"] for t in server_ms)}
    return results


async def in_process_side(archive: bytes, collection: dict, docs: list[str], queries: list[str],
                          concurrencies: list[int], warmup: int, work: Path) -> dict:
    """The same embedding and search without REST or Serve: the plugin's steps in a plugin host
    driven from this process — `sandbox off` (the steps in this very process) and `sandbox on`
    (a confined host process, as replicas use) — so the host's own cost shows too."""
    import hashlib

    from engine.ingest.worker import PluginSpec, open_spec_host
    from infra.vectors.base import Point, VectorSpec
    from infra.vectors.edge import EdgeVectorIndex

    plugin, extractor, feature = collection["plugin"], collection["feature_extractor"], collection["vector_indexes"][0]
    name = feature["name"]

    def spec(mode: str) -> PluginSpec:
        return PluginSpec(
            plugin_id=plugin["plugin_id"], namespace=NAMESPACE, name=plugin["plugin_name"], version=plugin["version"],
            sha256=hashlib.sha256(archive).hexdigest(), archive=archive, parameters=dict(extractor.get("parameters") or {}),
            features=((name, int(feature["dimensions"])),),
            sandbox={"enabled": mode == "on", "cache_root": str(work / "sandbox")},
        )

    hosts = {mode: open_spec_host(spec(mode)) for mode in ("off", "on")}

    def embed(mode: str, texts: list[str]) -> list:
        from engine.ingest.worker import decode_vectors

        answer, body = hosts[mode].call("embed", {"texts": texts, "parameters": {}})
        assert answer["ok"], answer
        vectors = []
        for v in decode_vectors(answer, body)[name]:
            assert v is not None  # the bench's texts are never empty, so each one has a vector
            vectors.append(v.tolist())
        return vectors

    index = EdgeVectorIndex(work / "vectors")
    await index.connect()
    try:
        await index.create_collection("bench", {name: VectorSpec(size=int(feature["dimensions"]), distance=feature["distance"])})
        for start in range(0, len(docs), 64):
            part = docs[start:start + 64]
            vectors = embed("off", part)
            await index.upsert("bench", [Point(id=str(uuid.uuid5(uuid.NAMESPACE_URL, t)),
                                               vectors={name: v}, payload={"text": t}) for t, v in zip(part, vectors, strict=True)])
        results: dict = {}
        for mode in ("off", "on"):
            lock = asyncio.Lock()

            async def call(q: str, mode: str = mode, lock: asyncio.Lock = lock) -> None:
                async with lock:  # one host answers one call at a time, as a replica's does
                    vector = (await asyncio.to_thread(embed, mode, [q]))[0]
                await index.search("bench", name, vector, limit=10)

            await run_clients(call, queries[:warmup], 4)
            for c in concurrencies:
                latencies, wall = await run_clients(call, list(queries), c)
                results[(mode, c)] = {"latencies": latencies, "wall": wall}
        return {c: results[("off", c)] for c in concurrencies} | {("on", c): results[("on", c)] for c in concurrencies}
    finally:
        await index.close()
        for host in hosts.values():
            host.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--requests", type=int, default=300, help="queries per concurrency level and side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--plugin", default="text_embedding", help="plugin the collection uses (default the builtin)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    args = parser.parse_args(argv)

    docs = paragraphs(args.docs)
    queries = queries_for(docs, args.requests)
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-query-"))
    data_dir = work / "data"
    server = Server(data_dir)
    try:
        server.wait_ready()
        started = time.perf_counter()
        collection, archive = asyncio.run(prepare_server(server, data_dir, docs, args.plugin))
        print(f"server: {len(docs)} documents ingested and {collection['plugin']['plugin_name']} "
              f"{collection['plugin']['version']} deployed ({collection['deployment']['mode']}) in {time.perf_counter() - started:.1f}s")
        rest = asyncio.run(rest_side(server, collection, queries, args.concurrency, args.warmup))
    finally:
        server.stop()
    local = asyncio.run(in_process_side(archive, collection, docs, queries, args.concurrency, args.warmup, work))

    print(f"\n{len(queries)} queries per level; latency in ms (p50 / p99), throughput in queries/s")
    print(f"{'clients':>7}  {'in-process p50/p99':>19}  {'REST p50/p99':>15}  {'overhead p50/p99':>17}  "
          f"{'q/s local':>9}  {'q/s REST':>8}  server: embed / search / total p50")
    overhead = tails = None
    for c in args.concurrency:
        lo, re_ = local[c]["latencies"], rest[c]["latencies"]
        lp50, lp99, rp50, rp99 = percentile(lo, 50), percentile(lo, 99), percentile(re_, 50), percentile(re_, 99)
        print(f"{c:>7}  {lp50:8.2f} / {lp99:8.2f}  {rp50:6.2f} / {rp99:6.2f}  {rp50 - lp50:+7.2f} / {rp99 - lp99:+7.2f}  "
              f"{len(lo) / local[c]['wall']:9.1f}  {len(re_) / rest[c]['wall']:8.1f}  "
              f"{rest[c]['embed_ms']:.2f} / {rest[c]['search_ms']:.2f} / {rest[c]['server_ms']:.2f}")
        if c == 1:
            overhead = rp50 - lp50
        if c == 16:
            tails = rp99 / rp50
    print()
    if overhead is not None:
        print(f"REST overhead at p50, 1 client: {overhead:+.2f} ms (target <= +5 ms): {'PASS' if overhead <= 5.0 else 'MISS'}")
    if tails is not None:
        print(f"REST p99 / p50 at 16 clients: {tails:.2f}x (target <= 3x): {'PASS' if tails <= 3.0 else 'MISS'}")
    if overhead is None or tails is None:
        print("(the targets are read at 1 and 16 clients: run with --concurrency 1 16)")
    print("\nthe plugin host's own cost (embed + search in this process; steps in-process vs in a confined host):")
    for c in args.concurrency:
        off, on = local[c]["latencies"], local[("on", c)]["latencies"]
        extra = percentile(on, 50) - percentile(off, 50)
        print(f"{c:>7} client(s): p50 {percentile(off, 50):.2f} -> {percentile(on, 50):.2f} ms ({extra:+.2f} ms; target <= 1 ms), "
              f"p99 {percentile(off, 99):.2f} -> {percentile(on, 99):.2f} ms")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"data kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
