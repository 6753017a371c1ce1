"""Warm-path latency of the two things users wait for, measured against a running `sluice up`.

    .venv/bin/python bench/latency.py [--pushes 6] [--objects 8] [--collections 2] [--data-dir DIR]

The server is `sluice up` in its own process (fresh data dir, embedded defaults: SQLite catalog
and bus, local object store, qdrant-edge, local Ray, sandbox on). Everything goes over REST, as a
client would do it:

1. push: the `sluice plugin init` template (its `text_embedding`-style embedder on the packaged
   all-MiniLM-L6-v2), pushed `--pushes` times as new versions: upload ticket, PUT to the presigned
   URL, confirm, and polling the upload until REGISTERED, `--push-interval` seconds apart (a
   developer edits between pushes; the namespace's spare validation host warms meanwhile). The
   first push is reported apart (no spare yet); the target is p50 <= 1 s over the warm ones.
2. ingest: a collection on the builtin `text_embedding`, then `--objects` small texts uploaded one
   at a time (ticket, PUT, confirm), each waited for until its task is COMPLETED: time from the
   upload request to the task's end as the client sees it (polling every 20 ms) and as the server
   recorded it (confirm answered -> task finished). The first object of each of `--collections`
   new collections is reported apart (cold: the collection's warm pool starts); the target is p50
   <= 2 s over the others.

Each figure is printed with its target; a failed step ends the run with its answer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.server import ADMIN, Server  # noqa: E402

NAMESPACE = "latency"
POLL_S = 0.02


def _check(response: httpx.Response, *codes: int) -> dict:
    if response.status_code not in codes:
        raise SystemExit(f"{response.request.method} {response.request.url.path} answered {response.status_code}: {response.text[:2000]}")
    return response.json()


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def template_archive(work: Path, name: str) -> bytes:
    """The `sluice plugin init` template as a zip, made by the CLI itself."""
    from functions.cli.plugin import build_zip

    subprocess.run([sys.executable, "-m", "functions.cli", "plugin", "init", name, "--dir", str(work)], cwd=ROOT, check=True,
                   capture_output=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")})
    return build_zip(work / name)


def push(client: httpx.Client, name: str, version: str, archive: bytes) -> float:
    """Seconds from the upload request to REGISTERED."""
    started = time.perf_counter()
    ticket = _check(client.post(f"/v1/namespaces/{NAMESPACE}/plugins/uploads", json={"name": name, "version": version}), 201)
    put = httpx.put(ticket["presigned_url"], content=archive, headers=ticket["upload_headers"], timeout=60)
    if put.status_code not in (200, 201, 204):
        raise SystemExit(f"PUT of the plugin archive answered {put.status_code}: {put.text[:500]}")
    outcome = _check(client.post(ticket["confirm_url"], params={"wait": 60}), 200, 202, 422)
    while outcome["status"] not in ("REGISTERED", "FAILED"):
        time.sleep(POLL_S)
        outcome = _check(client.get(f"/v1/namespaces/{NAMESPACE}/plugins/uploads/{ticket['upload_id']}"), 200)
    if outcome["status"] != "REGISTERED":
        raise SystemExit(f"push of {name} {version} failed: {outcome}")
    return time.perf_counter() - started


def ingest_one(client: httpx.Client, bucket: str, collection_id: str, key: str, text: str) -> tuple[float, float]:
    """(client seconds: upload request -> task COMPLETED seen; server seconds: confirm -> task finished)."""
    base = f"/v1/namespaces/{NAMESPACE}/buckets/{bucket}"
    seen = {t["task_id"] for t in _check(client.get(f"/v1/namespaces/{NAMESPACE}/tasks",
                                                    params={"collection_id": collection_id, "limit": 1000}), 200)["tasks"]}
    started = time.perf_counter()
    ticket = _check(client.post(f"{base}/uploads", json={"key": key, "content_type": "text/plain"}), 201)
    put = httpx.put(ticket["presigned_url"], content=text.encode(), headers=ticket["upload_headers"], timeout=60)
    if put.status_code not in (200, 201, 204):
        raise SystemExit(f"PUT of {key} answered {put.status_code}: {put.text[:500]}")
    _check(client.post(ticket["confirm_url"]), 200)
    confirmed = datetime.now().astimezone()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        tasks = _check(client.get(f"/v1/namespaces/{NAMESPACE}/tasks", params={"collection_id": collection_id, "limit": 1000}),
                       200)["tasks"]
        for task in tasks:
            if task["task_id"] in seen or task["status"] not in ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"):
                continue
            if task["status"] != "COMPLETED":
                raise SystemExit(f"task {task['task_id']} for {key} ended {task['status']}: {task.get('reason') or task.get('failures')}")
            elapsed = time.perf_counter() - started
            finished = datetime.fromisoformat(task["finished_at"])
            return elapsed, (finished - confirmed).total_seconds()
        time.sleep(POLL_S)
    raise SystemExit(f"{key} was not ingested within 300 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=5, help="versions of the template pushed (the first is cold)")
    parser.add_argument("--push-interval", type=float, default=10.0,
                        help="seconds between pushes, as a developer edits between them (default 10)")
    parser.add_argument("--objects", type=int, default=8, help="small texts ingested one at a time per collection")
    parser.add_argument("--collections", type=int, default=2, help="new collections (each one's first object is cold)")
    parser.add_argument("--data-dir", type=Path, default=None, help="state folder (default: a fresh temp folder, removed)")
    args = parser.parse_args(argv)

    work = args.data_dir or Path(tempfile.mkdtemp(prefix="sluice-bench-latency-"))
    server = Server(work / "data")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as client:
            _check(client.post("/v1/namespaces", json={"namespace_name": NAMESPACE}), 201)
            archive = template_archive(work, "latency_probe")
            pushes = []
            for i in range(args.pushes):
                if i:
                    time.sleep(args.push_interval)
                pushes.append(push(client, "latency_probe", f"1.0.{i}", archive))
            print(f"push (init template -> REGISTERED): first {pushes[0]:.2f} s; warm p50 {_p50(pushes[1:]):.2f} s "
                  f"(min {min(pushes[1:], default=float('nan')):.2f}, max {max(pushes[1:], default=float('nan')):.2f}, "
                  f"n={len(pushes) - 1})  target warm p50 <= 1 s: {'PASS' if _p50(pushes[1:]) <= 1 else 'MISS'}")

            firsts: list[tuple[float, float]] = []
            warm: list[tuple[float, float]] = []
            for c in range(args.collections):
                bucket = f"latency-{c}"
                collection = _check(client.post(f"/v1/namespaces/{NAMESPACE}/collections", json={
                    "collection_name": f"latency_{c}", "source": {"bucket": bucket},
                    "feature_extractor": {"feature_extractor_name": "text_embedding"}}), 201)
                for i in range(args.objects + 1):
                    text = f"Object {i} of collection {c}: a short note about warm pools and latency, written at {time.time()}."
                    result = ingest_one(client, bucket, collection["collection_id"], f"note-{i}.txt", text)
                    (firsts if i == 0 else warm).append(result)
            print(f"ingest, first object of a new collection: client p50 {_p50([f[0] for f in firsts]):.2f} s, "
                  f"server p50 {_p50([f[1] for f in firsts]):.2f} s (each: {', '.join(f'{f[0]:.2f}' for f in firsts)})")
            client_p50, server_p50 = _p50([w[0] for w in warm]), _p50([w[1] for w in warm])
            print(f"ingest, one small object into a warm collection: client p50 {client_p50:.2f} s (max "
                  f"{max(w[0] for w in warm):.2f}), server p50 {server_p50:.2f} s, n={len(warm)}  target p50 <= 2 s: "
                  f"{'PASS' if client_p50 <= 2 else 'MISS'}")
    finally:
        server.stop()
        if args.data_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
