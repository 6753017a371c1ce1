"""Ingest at scale: N small objects dropped at once, time per object and peak memory, for two N.

    .venv/bin/python bench/scale.py [--objects 10000 100000] [--sandbox on|off] [--data-dir DIR]

Each size runs in a fresh child process (so one run's heap and Ray never weigh on the other's):
the embedded stack in that process (SQLite catalog and bus, qdrant-edge, local object store,
local Ray, the drop folder), `hash_embedder` (tests/plugins/fixtures: a hashed bag of words, no
model) pushed and checked like any plugin, one collection over the bucket `scale`. The clock
starts when the first of N small text objects (a few dozen bytes each) is written into the drop
folder and stops when `IngestCompleted` has covered every object; meanwhile a thread samples the
resident memory of the whole process tree (the child, Ray's processes, plugin hosts) every 0.25 s.

So the plugin costs next to nothing and what grows with N is the platform's own work per object:
the drop folder, the queue, the scheduler, the catalog. Prints, per size, the seconds, the seconds
per object, the tasks it took and the peak memory of the tree; then the ratios of the larger run
to the smaller, per object (target <= 1.2) and peak memory (target <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ADMIN = "sk_admin_bench-0123456789abcdef012"
NAMESPACE, BUCKET = "bench", "scale"
WORDS = ("river", "sluice", "gate", "water", "mill", "lock", "weir", "canal", "flow", "basin", "dam", "stream")


def text_of(i: int) -> str:
    """A small, distinct text (30-60 bytes)."""
    return f"note {i}: " + " ".join(WORDS[(i * k + k) % len(WORDS)] for k in range(1, 6))


class TreeMemory:
    """Samples the resident memory of this process and all its descendants in a thread; `peak` in bytes."""

    def __init__(self, every_s: float = 0.25) -> None:
        import psutil

        self._root, self._every = psutil.Process(), every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-memory", daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass  # gone between listing and reading
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


async def one_run(objects: int, data_dir: Path, sandbox: Literal["on", "off"]) -> dict:
    import httpx
    from pydantic import SecretStr

    from events import codec
    from functions.rest.app import create_app
    from functions.runtime.run import functions_running
    from infra.bootstrap import bootstrap
    from infra.logging import configure_logging
    from infra.settings import Settings
    from tests.fixtures.plugins import HASH_EMBEDDER, zip_folder

    settings = Settings(data_dir=data_dir, admin_key=SecretStr(ADMIN), log_level="WARNING", log_json=True, sandbox=sandbox)
    configure_logging("WARNING", json=True)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    drop_root = data_dir / "drop"
    with TreeMemory() as memory:
        async with bootstrap(settings) as platform, functions_running(platform, drop_folder=drop_root, reconcile=False):
            transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.bench", timeout=600) as api:
                r = await api.post("/v1/namespaces", json={"namespace_name": NAMESPACE}, headers=headers)
                assert r.status_code == 201, r.text
                r = await api.post(f"/v1/namespaces/{NAMESPACE}/plugins/uploads", json={"name": "hash_embedder", "version": "1.0.0"},
                                   headers=headers)
                assert r.status_code == 201, r.text
                ticket = r.json()
                put = await api.put(ticket["presigned_url"], content=zip_folder(HASH_EMBEDDER, top="hash_embedder"),
                                    headers=ticket["upload_headers"])
                assert put.status_code in (200, 204), put.text
                r = await api.post(f"/v1/namespaces/{NAMESPACE}/plugins/uploads/{ticket['upload_id']}/confirm",
                                   params={"wait": 300}, headers=headers)
                assert r.status_code == 200, r.text
                r = await api.post(f"/v1/namespaces/{NAMESPACE}/collections", headers=headers, json={
                    "collection_name": "scale", "source": {"bucket": BUCKET, "prefix": ""},
                    "feature_extractor": {"feature_extractor_name": "hash_embedder", "version": "1.0.0"}})
                assert r.status_code == 201, r.text
                collection_id = r.json()["collection_id"]
            subscriber = await platform.bus.subscribe([platform.topics.ingest], group_id="bench", from_beginning=True)
            try:
                folder = drop_root / NAMESPACE / BUCKET
                folder.mkdir(parents=True, exist_ok=True)
                base = memory.peak
                start = time.perf_counter()
                for i in range(objects):  # written whole, then renamed: the drop folder never sees half a file
                    sub = folder / f"d{i // 1000:04d}"
                    if i % 1000 == 0:
                        sub.mkdir(exist_ok=True)
                    part = sub / f"n{i:07d}.txt.part"
                    part.write_text(text_of(i), encoding="utf-8")
                    part.rename(sub / f"n{i:07d}.txt")
                dropped = time.perf_counter() - start
                covered, documents, tasks, failed = 0, 0, 0, 0
                while covered < objects:
                    for message in await subscriber.fetch(timeout_s=0.5):
                        event = codec.decode(message.value)
                        if event.type in ("IngestCompleted", "IngestFailed") and event.payload.collection_id == collection_id:
                            tasks += 1
                            if event.type == "IngestFailed":
                                failed += 1
                                print(f"  task failed: {event.payload.reason}", file=sys.stderr)
                                covered += len(await platform.catalog.find("ingest_queue", {"claimed_by": event.payload.task_id}))
                            else:
                                covered += event.payload.objects
                                documents += event.payload.documents_written
                seconds = time.perf_counter() - start
            finally:
                await subscriber.close()
    return {"objects": objects, "seconds": seconds, "dropped_s": dropped, "tasks": tasks, "failed": failed, "documents": documents,
            "peak_rss": memory.peak, "rss_before_drop": base}


def run_child(objects: int, data_dir: Path | None, sandbox: str) -> dict:
    """One size in a fresh process; its result as the last line of its output."""
    with tempfile.TemporaryDirectory(prefix=f"sluice-bench-scale-{objects}-") as tmp:
        where = (data_dir / str(objects)) if data_dir else Path(tmp)
        command = [sys.executable, __file__, "--child", str(objects), "--sandbox", sandbox, "--data-dir", str(where)]
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if data_dir is None:
            shutil.rmtree(where, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the run of {objects} objects failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[10_000, 100_000], help="sizes to run, smallest first")
    parser.add_argument("--sandbox", choices=("on", "off"), default="on", help="plugin code in confined hosts (default on)")
    parser.add_argument("--data-dir", type=Path, default=None, help="state folder (default: a fresh temp folder per size)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        result = asyncio.run(one_run(args.child, args.data_dir, args.sandbox))
        print(json.dumps(result), flush=True)
        os._exit(0)  # Ray's and the drop folder's threads need not be waited for

    print(f"{os.cpu_count()} CPUs; sandbox {args.sandbox}; sizes {args.objects}")
    results = []
    for objects in args.objects:
        r = run_child(objects, args.data_dir, args.sandbox)
        results.append(r)
        print(f"{objects:>8} objects: {r['seconds']:8.1f} s ({r['dropped_s']:.1f} s to write them), "
              f"{r['seconds'] / objects * 1000:7.3f} ms/object, {r['tasks']} task(s) ({r['failed']} failed), "
              f"{r['documents']} documents; peak memory of the process tree {r['peak_rss'] / 2**20:,.0f} MiB "
              f"({r['rss_before_drop'] / 2**20:,.0f} MiB before the drop)", flush=True)
        if r["failed"] or r["documents"] != objects:
            print(f"  MISMATCH: {objects} objects dropped, {r['documents']} documents written")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        per_object = (large["seconds"] / large["objects"]) / (small["seconds"] / small["objects"])
        memory = large["peak_rss"] / small["peak_rss"]
        print(f"x{large['objects'] / small['objects']:g} objects: time per object x{per_object:.2f} (target <= 1.2), "
              f"peak memory x{memory:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
