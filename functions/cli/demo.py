"""`sluice demo`: the product end to end on the embedded stack, through the REST API as a client
would use it.

1. health, and a key scoped to one namespace sees only that namespace;
2. a collection over a bucket with the builtin `text_embedding` plugin (recreated on every run);
3. a folder of real text (Debian's license texts by default) dropped into the drop folder;
4. wait for the ingest tasks to finish, and check that what they report is what the stores hold;
5. search, and print the best hits.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_fixed

from functions.cli.client import demo_client

DEFAULT_FOLDER = Path("/usr/share/common-licenses")
NAMESPACE = "demo"
BUCKET = "demo-texts"
COLLECTION = "licenses"
QUERIES = (
    "permission to copy and distribute modified versions",
    "no warranty, the software is provided as is",
    "patent license granted by contributors",
)


def _files(folder: Path, limit: int | None) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return files[:limit] if limit else files


async def _check(client: httpx.AsyncClient, admin: dict) -> bool:
    health = (await client.get("/v1/health", headers=admin)).json()
    ports = ", ".join(f"{k}={v['adapter']}:{v['status']}" for k, v in health["ports"].items())
    print(f"demo: health {health['status']}: {ports}")
    keyless = await client.get("/v1/namespaces")
    print(f"demo: a request without a key -> {keyless.status_code} {keyless.json()['error']['type']}")
    r = await client.post("/v1/namespaces", json={"namespace_name": NAMESPACE}, headers=admin)
    print(f"demo: create namespace {NAMESPACE!r} -> {r.status_code}{' (exists)' if r.status_code == 409 else ''}")
    r = await client.post(f"/v1/namespaces/{NAMESPACE}/api-keys", json={"name": "demo"}, headers=admin)
    key = r.json()["api_key"]
    seen = (await client.get("/v1/namespaces", headers={"Authorization": f"Bearer {key}"})).json()["namespaces"]
    other = await client.get("/v1/namespaces/elsewhere", headers={"Authorization": f"Bearer {key}"})
    names = [n["namespace_name"] for n in seen]
    print(f"demo: a key scoped to {NAMESPACE!r} sees {names}, elsewhere -> {other.status_code}")
    return health["status"] == "ok" and keyless.status_code == 401 and other.status_code == 403 and len(seen) == 1


async def _fresh_collection(client: httpx.AsyncClient, admin: dict) -> dict:
    base = f"/v1/namespaces/{NAMESPACE}/collections"
    for existing in (await client.get(base, headers=admin)).json()["collections"]:
        if existing["collection_name"] == COLLECTION:
            await client.delete(f"{base}/{existing['collection_id']}", headers=admin)
            print(f"demo: removed the previous {COLLECTION!r} collection")
    r = await client.post(base, headers=admin, json={
        "collection_name": COLLECTION, "source": {"bucket": BUCKET, "prefix": ""},
        "feature_extractor": {"feature_extractor_name": "text_embedding"},
    })
    r.raise_for_status()
    return r.json()


async def _wait_for_tasks(client: httpx.AsyncClient, admin: dict, collection_id: str, objects: int,
                          timeout_s: float) -> list[dict]:
    """Every second, the collection's finished tasks (printing progress when it changes), until
    they have seen `objects` objects; TimeoutError after `timeout_s`."""
    last = [""]

    async def finished() -> tuple[int, list[dict]]:
        tasks = (await client.get(f"/v1/namespaces/{NAMESPACE}/tasks", params={"collection_id": collection_id},
                                  headers=admin)).json()["tasks"]
        done = [t for t in tasks if t["status"] in ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED")]
        objects_done = sum(t["objects"] for t in done)
        written = sum(t["documents_written"] for t in done)
        line = f"demo: ingest {objects_done}/{objects} objects done, {written} documents"
        running = [t for t in tasks if t not in done]
        if running:
            line += (f" ({sum(t.get('rows_done', 0) for t in running)} of the running task's "
                     f"{sum(t['objects'] for t in running)} seen)")
        if line != last[0]:
            print(line, flush=True)
            last[0] = line
        return objects_done, done

    retrying = AsyncRetrying(retry=retry_if_result(lambda result: result[0] < objects), wait=wait_fixed(1.0),
                             stop=stop_after_delay(timeout_s), retry_error_callback=lambda state: None)
    result: tuple[int, Any] | None = await retrying(finished)
    if result is None:
        raise TimeoutError(f"ingest did not finish within {timeout_s:.0f}s")
    return result[1]


async def run_demo(settings: Any, platform: Any, *, folder: Path = DEFAULT_FOLDER, limit: int | None = None,
                   timeout_s: float = 1200.0) -> int:
    admin = {"Authorization": f"Bearer {platform.admin_key}"}
    async with demo_client(settings.effective_public_url) as client:
        ok = await _check(client, admin)
        if not folder.is_dir():
            print(f"demo: FAILED: no folder {folder} to ingest (pass --folder)")
            return 1
        files = _files(folder, limit)
        if not files:
            print(f"demo: FAILED: {folder} holds no files")
            return 1
        collection = await _fresh_collection(client, admin)
        collection_id = collection["collection_id"]
        index = collection["vector_indexes"][0]
        print(f"demo: collection {COLLECTION!r} ({collection_id}) over bucket {BUCKET!r}: text_embedding "
              f"{collection['feature_extractor']['version']}, vector {index['name']!r} "
              f"{index['dimensions']}-d {index['distance']}")

        started = time.monotonic()
        drop = settings.data_dir / "drop" / NAMESPACE / BUCKET
        total = 0
        for path in files:
            target = drop / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target.with_name(target.name + ".part"))
            target.with_name(target.name + ".part").rename(target)  # complete files only: the drop folder skips *.part
            total += path.stat().st_size
        print(f"demo: dropped {len(files)} files ({total / 1e6:.1f} MB) from {folder} into {drop}")

        tasks = await _wait_for_tasks(client, admin, collection_id, len(files), timeout_s)
        seconds = time.monotonic() - started
        written = sum(t["documents_written"] for t in tasks)
        vectors = sum(sum(t["vectors_upserted"].values()) for t in tasks)
        failed = [t for t in tasks if t["status"] == "FAILED"]
        rows_failed = sum(t["rows_failed"] for t in tasks)
        detail = (await client.get(f"/v1/namespaces/{NAMESPACE}/collections/{collection_id}", headers=admin)).json()
        stored_docs, stored_vectors = detail["document_count"], detail["vector_indexes"][0]["vector_count"]
        print(f"demo: {len(tasks)} task(s) in {seconds:.1f}s: {written} documents and {vectors} vectors written, "
              f"{rows_failed} rows failed; the stores hold {stored_docs} documents and {stored_vectors} vectors")
        for task in failed:
            print(f"demo: task {task['task_id']} FAILED: {task['reason']}")
        counts_ok = written == stored_docs and vectors == stored_vectors and written > 0 and not failed

        for query in QUERIES:
            r = await client.post(f"/v1/namespaces/{NAMESPACE}/collections/{collection_id}/search",
                                  json={"query": query, "limit": 3}, headers=admin)
            if r.status_code != 200:
                print(f"demo: search {query!r} -> {r.status_code} {r.text}")
                ok = False
                continue
            print(f"demo: search {query!r}")
            for hit in r.json()["results"]:
                snippet = " ".join((hit.get("text") or "").split())[:90]
                print(f"         {hit['score']:.3f}  {hit['source']['key']:<24} {snippet}")
    ok = ok and counts_ok
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1
