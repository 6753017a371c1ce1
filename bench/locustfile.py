"""The locust users of bench/two_tenants.py, and one headless run of them (locust as a library).

    .venv/bin/python bench/locustfile.py CONFIG.json RESULT.json

Run by bench/two_tenants.py in a process of its own: importing locust monkey-patches the process
with gevent, so the orchestrator (which starts `sluice up` and reads the stores) stays unpatched,
and the quiet tenant's clients never share a process, and so a CPU, with the flood's greenlets.

CONFIG names the role: `quiet` runs one `QuietIngest` and one `QuietSearch` user, `flood` runs
`flood_users` `FloodUpload` users; both for `seconds`. RESULT holds raw figures (every latency,
every error), so two_tenants.py computes exact percentiles rather than locust's rounded ones.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, constant, task
from locust.env import Environment

CONFIG: dict[str, Any] = {}
RESULT: dict[str, Any] = {
    "ingest_ms": [],            # quiet: start of the upload request -> document_count shows the object
    "confirm_ms": [],           # quiet: of which upload request + PUT + confirm (every confirmed object)
    "ingest_failures": [],      # quiet: uploads refused, or objects not ingested within ingest_timeout_s
    "confirmed": 0,             # quiet: objects confirmed (each one document once ingested)
    "search_ms": [], "search_errors": [],
    "uploads": 0, "large_uploads": 0, "upload_bytes": 0, "upload_errors": [],  # flood
}
PENDING: dict[str, float] = {}  # quiet objects confirmed and not yet seen ingested: key -> start


def _upload(user: HttpUser, who: str, key: str, body: bytes) -> str | None:
    """Upload request, PUT to the presigned URL, confirm; None when all three succeeded, else the error."""
    ns, bucket = CONFIG["namespace"], CONFIG["bucket"]
    with user.client.post(f"/v1/namespaces/{ns}/buckets/{bucket}/uploads", json={"key": key, "content_type": "text/plain"},
                          name=f"{who}: upload request", catch_response=True, timeout=120) as r:
        if r.status_code != 201:
            r.failure(f"{r.status_code}")
            return f"upload request {r.status_code}: {r.text[:200]}"
        ticket = r.json()
    # the presigned URL carries its own authority: no API key on the PUT
    with user.client.put(ticket["presigned_url"], data=body, headers={**ticket["upload_headers"], "Authorization": None},
                         name=f"{who}: PUT presigned", catch_response=True, timeout=120) as r:
        if r.status_code not in (200, 204):
            r.failure(f"{r.status_code}")
            return f"PUT {r.status_code}: {r.text[:200]}"
    with user.client.post(f"/v1/namespaces/{ns}/buckets/{bucket}/uploads/{ticket['upload_id']}/confirm",
                          name=f"{who}: confirm", catch_response=True, timeout=120) as r:
        if r.status_code not in (200, 201):
            r.failure(f"{r.status_code}")
            return f"confirm {r.status_code}: {r.text[:200]}"
    return None


class _Tenant(HttpUser):
    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        self.client.headers.update({"Authorization": f"Bearer {CONFIG['key']}"})


class QuietIngest(_Tenant):
    """One small text object at a time: upload, confirm, then poll the collection until its
    `document_count` grows by one. Only this user writes into the quiet collection and each text
    is one chunk (under `chunk_size`), so the count growing means this object's document is
    written — and its point too: the task writer upserts points before it writes documents, so
    the object is searchable by then."""

    fixed_count = 1

    def count(self) -> int | None:
        with self.client.get(f"/v1/namespaces/{CONFIG['namespace']}/collections/{CONFIG['collection_id']}",
                             name="quiet: poll collection", catch_response=True, timeout=120) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}")
                return None
            return int(r.json()["document_count"])

    @task
    def ingest_one(self) -> None:
        before = self.count()
        if before is None:
            gevent.sleep(CONFIG["poll_s"])
            return
        key = f"quiet/{uuid.uuid4().hex}.txt"
        text = f"{random.choice(CONFIG['texts'])} marker{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        error = _upload(self, "quiet", key, text.encode())
        if error:
            RESULT["ingest_failures"].append(error)
            return
        confirmed = time.perf_counter()
        RESULT["confirmed"] += 1
        RESULT["confirm_ms"].append((confirmed - started) * 1000)
        PENDING[key] = started
        while time.perf_counter() - confirmed < CONFIG["ingest_timeout_s"]:
            gevent.sleep(CONFIG["poll_s"])
            now = self.count()
            if now is not None and now > before:
                done = time.perf_counter()
                PENDING.pop(key, None)
                RESULT["ingest_ms"].append((done - started) * 1000)
                self.environment.events.request.fire(request_type="INGEST", name="quiet: upload -> ingested",
                                                     response_time=(done - started) * 1000, response_length=len(text),
                                                     exception=None, context={})
                return
        PENDING.pop(key, None)
        RESULT["ingest_failures"].append(f"{key} not ingested {CONFIG['ingest_timeout_s']:.0f}s after its confirm")


class QuietSearch(_Tenant):
    """`feature_search` on the quiet collection, back to back, one query at a time."""

    fixed_count = 1

    @task
    def search(self) -> None:
        body = {"collection_id": CONFIG["collection_id"], "query": {"text": random.choice(CONFIG["queries"])}, "limit": 10}
        started = time.perf_counter()
        with self.client.post(f"/v1/namespaces/{CONFIG['namespace']}/retrievers/feature_search", json=body,
                              name="quiet: feature_search", catch_response=True, timeout=120) as r:
            ms = (time.perf_counter() - started) * 1000
            if r.status_code == 200:
                RESULT["search_ms"].append(ms)
            else:
                r.failure(f"{r.status_code}")
                RESULT["search_errors"].append(f"{r.status_code} after {ms:.0f} ms: {(r.text or str(r.error))[:300]}")


class FloodUpload(_Tenant):
    """Uploads and confirms as fast as it can: `flood_bytes` texts, one in `large_every` of
    `large_bytes` (slices of one pool of paragraphs, each under its own key)."""

    pool = ""

    @task
    def upload(self) -> None:
        if not FloodUpload.pool:
            text = " ".join(CONFIG["texts"])
            FloodUpload.pool = text * (2 * CONFIG["large_bytes"] // max(1, len(text)) + 2)
        large = CONFIG["large_every"] > 0 and random.randrange(CONFIG["large_every"]) == 0
        size = CONFIG["large_bytes"] if large else CONFIG["flood_bytes"]
        start = random.randrange(len(FloodUpload.pool) - size)
        body = FloodUpload.pool[start:start + size].encode()
        error = _upload(self, "flood", f"flood/{uuid.uuid4().hex}.txt", body)
        if error:
            RESULT["upload_errors"].append(error)
            gevent.sleep(0.1)
            return
        RESULT["uploads"] += 1
        RESULT["large_uploads"] += int(large)
        RESULT["upload_bytes"] += len(body)


def main(argv: list[str]) -> int:
    config_path, result_path = Path(argv[0]), Path(argv[1])
    CONFIG.update(json.loads(config_path.read_text()))
    classes: list[type[HttpUser]] = [QuietIngest, QuietSearch] if CONFIG["role"] == "quiet" else [FloodUpload]
    users = 2 if CONFIG["role"] == "quiet" else CONFIG["flood_users"]
    env = Environment(user_classes=list(classes), host=CONFIG["url"])
    runner = env.create_local_runner()
    started = time.time()
    runner.start(users, spawn_rate=users)
    gevent.spawn_later(CONFIG["seconds"], runner.quit)
    runner.greenlet.join()
    stopped = time.time()
    now = time.perf_counter()
    RESULT.update({
        "started_at": started, "stopped_at": stopped, "seconds": stopped - started,
        "pending_s": sorted(now - t for t in PENDING.values()),
        "requests": {f"{s.method} {s.name}": {"count": s.num_requests, "failures": s.num_failures,
                                              "p50_ms": s.get_response_time_percentile(0.5),
                                              "p99_ms": s.get_response_time_percentile(0.99)}
                     for s in env.stats.entries.values()},
        "errors": [f"{e.occurrences}x {e.method} {e.name}: {e.error}" for e in env.stats.errors.values()],
        "exceptions": [f"{e['count']}x {e['msg']}: {e['traceback'][-500:]}" for e in runner.exceptions.values()],
    })
    result_path.write_text(json.dumps(RESULT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
