"""Two tenants on one platform: does a quiet tenant's work still complete while another floods it?

    .venv/bin/python bench/two_tenants.py [--alone 60] [--flood 120] [--flood-users 8] [--quick]

Server: `sluice up` in its own process (embedded defaults, fresh data dir, local Ray; started
with bench/query.py's `Server`). Namespaces `flood` and `quiet`, each with its own API key
(`POST /v1/namespaces/{ns}/api-keys`, role `write`) and its own collection over its own bucket
with the builtin `text_embedding` plugin (all-MiniLM-L6-v2 on ONNX Runtime); both plugin versions
deployed, the quiet collection seeded with `--seed` paragraphs of Debian's license texts.

Load: locust used as a library, headless (`Environment`, `LocalRunner`), in bench/locustfile.py,
which runs in processes of its own: gevent's monkey-patching stays out of this one, and the quiet
tenant's clients do not share a process with the flood's. Every request uses the tenant's key.

1. alone (`--alone` s): the quiet tenant only. One user uploads ONE small text object (one
   paragraph and a unique marker word: one chunk, so one document), confirms it, and polls
   `GET /v1/namespaces/quiet/collections/{id}` until `document_count` grows by one — the signal:
   the confirm gives no task id, only this user writes into that collection, and the task writer
   upserts the object's point before its document, so the object is searchable then. Its latency
   runs from the upload request to that poll (every `--poll` s). Another user runs
   `feature_search` queries (3–7 words of the seeded paragraphs) back to back.
2. under flood (`--flood` s): the same two quiet users, and `--flood-users` users uploading and
   confirming into the flood tenant's bucket as fast as they can: `--flood-bytes` texts, one in
   `--large-every` of `--large-bytes` (~1 MB: about 1,100 chunks to embed).

After each phase it waits (up to `--drain` s) for the quiet object still in flight and counts it in
that phase, noted as landed late, so the next phase starts with none in flight and a phase shorter
than one ingest still has a figure. Per phase it prints the quiet tenant's ingest latency
p50/p95/max and count, its search p50/p99 and errors, its ingest tasks (queue wait and job time,
from `GET .../tasks`), the flood's uploads/s and what of it was ingested (documents written in the
phase, tasks finished). Then the ratios under flood / alone of the quiet tenant's ingest p50 and
search p50/p99: those are the figures. The target is that the quiet tenant's work still completes
under flood: it exits 1 if the quiet tenant completed no ingest in a phase or a search failed under
flood. Both phases run on the same server in one run; the ratios are within that run (the floor of
the ingest latency is the scheduler's burst window, `SLUICE_INGEST_MAX_DELAY_S`, 2 s by default,
plus one ingest job). `--quick` is a smoke run: 45 s alone, 60 s under 2 flood users, 20 seed
documents.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # its sibling `query`, as mypy names it (bench/ is no package)

import httpx  # noqa: E402
from query import ADMIN, Server, paragraphs, percentile, queries_for  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PLUGIN = "text_embedding"


class Tenant:
    """A namespace with its own key, bucket and collection."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.namespace, self.bucket = url, namespace, f"{namespace}-docs"
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300)
        with admin:
            r = admin.post("/v1/namespaces", json={"namespace_name": namespace})
            assert r.status_code == 201, r.text
            r = admin.post(f"/v1/namespaces/{namespace}/api-keys", json={"label": "bench", "role": "write"})
            if r.status_code == 422:  # a server without roles
                r = admin.post(f"/v1/namespaces/{namespace}/api-keys", json={})
            assert r.status_code == 201, r.text
            self.key = r.json()["api_key"]
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.key}"}, timeout=300)
        r = self.client.post(f"/v1/namespaces/{namespace}/collections", json={
            "collection_name": namespace, "source": {"bucket": self.bucket},
            "feature_extractor": {"feature_extractor_name": PLUGIN}})
        assert r.status_code == 201, r.text
        self.collection = r.json()
        self.collection_id: str = self.collection["collection_id"]

    def document_count(self) -> int:
        r = self.client.get(f"/v1/namespaces/{self.namespace}/collections/{self.collection_id}")
        assert r.status_code == 200, r.text
        return int(r.json()["document_count"])

    def wait_deployed(self, timeout: float = 600) -> None:
        plugin_id = self.collection["feature_extractor"]["plugin_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.get(f"/v1/namespaces/{self.namespace}/plugins/{plugin_id}/status").json()
            if status["status"] == "DEPLOYED":
                return
            if status["status"] in ("FAILED", "NOT_DEPLOYED"):
                raise SystemExit(f"{self.namespace}: deployment {status['status']}: {status.get('error') or status.get('reason')}")
            time.sleep(0.5)
        raise SystemExit(f"{self.namespace}: not deployed in {timeout:.0f}s")

    def put(self, key: str, text: str) -> None:
        r = self.client.post(f"/v1/namespaces/{self.namespace}/buckets/{self.bucket}/uploads",
                             json={"key": key, "content_type": "text/plain"})
        assert r.status_code == 201, r.text
        ticket = r.json()
        put = httpx.put(ticket["presigned_url"], content=text.encode(), headers=ticket["upload_headers"], timeout=300)
        assert put.status_code in (200, 204), put.text
        r = self.client.post(f"/v1/namespaces/{self.namespace}/buckets/{self.bucket}/uploads/{ticket['upload_id']}/confirm")
        assert r.status_code in (200, 201), r.text

    def wait_documents(self, count: int, timeout: float, poll: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.document_count() >= count:
                return True
            time.sleep(poll)
        return False

    def tasks(self) -> list[dict]:
        r = self.client.get(f"/v1/namespaces/{self.namespace}/tasks",
                            params={"collection_id": self.collection_id, "limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["tasks"]

    def close(self) -> None:
        self.client.close()


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _span(task: dict, start: str, end: str) -> float:
    """Seconds between two ISO times of a finished task."""
    return datetime.fromisoformat(task[end]).timestamp() - datetime.fromisoformat(task[start]).timestamp()


def run_phase(name: str, seconds: float, flood_users: int, quiet: Tenant, flood: Tenant, shared: dict, work: Path) -> dict:
    """The locust processes of one phase (quiet, and flood when `flood_users`), side by side."""
    tenants = {"quiet": quiet} | ({"flood": flood} if flood_users else {})
    flood_docs_before = flood.document_count()
    procs: dict[str, tuple[subprocess.Popen, Path, Any]] = {}
    for role, tenant in tenants.items():
        config = {**shared, "role": role, "url": tenant.url, "seconds": seconds, "namespace": tenant.namespace,
                  "key": tenant.key, "bucket": tenant.bucket, "collection_id": tenant.collection_id, "flood_users": flood_users}
        config_path, result_path = work / f"{name}-{role}.json", work / f"{name}-{role}.result.json"
        config_path.write_text(json.dumps(config))
        log = open(work / f"{name}-{role}.log", "w")  # noqa: SIM115 - closed below
        procs[role] = (subprocess.Popen([sys.executable, str(LOCUSTFILE), str(config_path), str(result_path)],
                                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), result_path, log)
    results: dict[str, dict] = {}
    for role, (proc, result_path, log) in procs.items():
        try:
            rc = proc.wait(timeout=seconds + 180)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
        if rc != 0 or not result_path.exists():
            tail = Path(log.name).read_text()[-3000:]
            raise SystemExit(f"locust ({name}, {role}) exited with {rc}:\n{tail}")
        results[role] = json.loads(result_path.read_text())
    out: dict[str, Any] = {"name": name, "seconds": seconds, "flood_users": flood_users, "large_bytes": shared["large_bytes"],
                           **results}
    out["flood_documents"] = flood.document_count() - flood_docs_before
    window = (results["quiet"]["started_at"], results["quiet"]["stopped_at"])
    flood_tasks = flood.tasks()
    out["flood_tasks"] = [t for t in flood_tasks if (f := _ts(t.get("finished_at"))) and window[0] <= f <= window[1]]
    out["flood_open"] = [t for t in flood_tasks if not t.get("finished_at")]
    return out


def quiet_tasks(phase: dict, quiet: Tenant) -> list[dict]:
    """The quiet tasks created in the phase (read after its drain, so the late one is finished)."""
    start, stop = phase["quiet"]["started_at"], phase["quiet"]["stopped_at"]
    return [t for t in quiet.tasks() if (c := _ts(t.get("created_at"))) and start <= c <= stop + 5 and t.get("finished_at")]


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):8.0f}" if values else "       -"


def report(phase: dict) -> None:
    quiet = phase["quiet"]
    ingest, search = quiet["ingest_ms"], quiet["search_ms"]
    title = "quiet tenant alone" if not phase["flood_users"] else f"under flood ({phase['flood_users']} flood users)"
    print(f"\nphase {phase['name']}: {title}, {quiet['seconds']:.0f} s")
    print(f"  quiet ingest (upload request -> document_count shows it): {len(ingest)} completed; ms p50 {_ms(ingest, 50)}"
          f"  p95 {_ms(ingest, 95)}  max {max(ingest) if ingest else 0:8.0f}"
          f"   (upload+PUT+confirm p50 {_ms(quiet['confirm_ms'], 50).strip()} ms)")
    if "drain_note" in phase:
        print(f"    {phase['drain_note']}")
    if quiet["ingest_failures"]:
        print(f"    failures: {len(quiet['ingest_failures'])} {quiet['ingest_failures'][:3]}")
    print(f"  quiet search (feature_search, 1 client): {len(search)} ok, {len(quiet['search_errors'])} errors; "
          f"ms p50 {_ms(search, 50)}  p99 {_ms(search, 99)}  max {max(search) if search else 0:8.0f}")
    for error in quiet["search_errors"][:5]:
        print(f"    error: {error}")
    tasks = phase["quiet_tasks"]
    if tasks:
        waits = [_span(t, "created_at", "started_at") for t in tasks if t.get("started_at")] or [0.0]
        jobs = [_span(t, "started_at", "finished_at") for t in tasks if t.get("started_at")] or [0.0]
        statuses = sorted({t["status"] for t in tasks})
        print(f"  quiet tasks of the phase: {len(tasks)} ({', '.join(statuses)}); queue wait (created -> started) s p50 "
              f"{percentile(waits, 50):.1f} max {max(waits):.1f}; job (started -> finished) s p50 {percentile(jobs, 50):.1f} "
              f"max {max(jobs):.1f}")
    if "flood" in phase:
        flood = phase["flood"]
        ftasks = phase["flood_tasks"]
        print(f"  flood uploads: {flood['uploads']} confirmed ({flood['large_uploads']} of them ~{phase['large_bytes'] / 1e6:.1f} MB) = "
              f"{flood['uploads'] / flood['seconds']:.1f}/s, {flood['upload_bytes'] / flood['seconds'] / 1e6:.2f} MB/s; "
              f"{len(flood['upload_errors'])} upload errors")
        for error in flood["upload_errors"][:3]:
            print(f"    error: {error}")
        print(f"  flood ingested in the phase: {phase['flood_documents']} documents written; {len(ftasks)} tasks finished "
              f"({sum(t.get('objects') or 0 for t in ftasks)} objects, "
              f"{sum(1 for t in ftasks if t['status'] == 'FAILED')} FAILED); at its end "
              f"{sum(1 for t in phase['flood_open'] if t['status'] == 'RUNNING')} task(s) running "
              f"({sum(t.get('objects') or 0 for t in phase['flood_open'])} objects)")
    for role in ("quiet", "flood"):
        if role in phase:
            for line in phase[role]["errors"][:5] + phase[role]["exceptions"][:3]:
                print(f"  locust {role}: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alone", type=float, default=60, help="seconds of the quiet tenant alone (default 60)")
    parser.add_argument("--flood", type=float, default=120, help="seconds under flood (default 120)")
    parser.add_argument("--flood-users", type=int, default=8, help="locust users of the flood tenant (default 8)")
    parser.add_argument("--flood-bytes", type=int, default=2048, help="size of a flood text (default 2 KB)")
    parser.add_argument("--large-every", type=int, default=50, help="one flood upload in N is a large one; 0: none (default 50)")
    parser.add_argument("--large-bytes", type=int, default=1_000_000, help="size of a large flood text (default ~1 MB)")
    parser.add_argument("--seed", type=int, default=50, help="paragraphs ingested into the quiet collection first")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between the quiet ingest user's polls")
    parser.add_argument("--ingest-timeout", type=float, default=600, help="give up on one quiet object after this (s)")
    parser.add_argument("--drain", type=float, default=600, help="most seconds to wait for quiet objects between phases")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 45 s alone, 60 s under 2 flood users, 20 seeds")
    parser.add_argument("--keep", action="store_true", help="keep the data dir, server and locust logs")
    args = parser.parse_args(argv)
    if args.quick:
        # one object alone takes ~25 s on a 2-CPU machine (a Ray Data job per task): 15 s would complete none
        args.alone, args.flood, args.flood_users, args.seed = 45, 60, 2, 20

    texts = paragraphs(300)
    queries = queries_for(texts[:args.seed], 200)
    shared = {"texts": texts, "queries": queries, "flood_bytes": args.flood_bytes, "large_every": args.large_every,
              "large_bytes": args.large_bytes, "poll_s": args.poll, "ingest_timeout_s": args.ingest_timeout}
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-two-tenants-"))
    server = Server(work / "data")
    failed = False
    try:
        server.wait_ready()
        started = time.perf_counter()
        flood, quiet = Tenant(server.url, "flood"), Tenant(server.url, "quiet")
        for i, text in enumerate(texts[:args.seed]):
            quiet.put(f"seed/{i:04d}.txt", text)
        for i, text in enumerate(texts[args.seed:args.seed + 5]):
            flood.put(f"seed/{i:04d}.txt", text)
        quiet.wait_deployed()
        flood.wait_deployed()
        if not quiet.wait_documents(args.seed, 900) or not flood.wait_documents(5, 900):
            raise SystemExit("the seed documents were not ingested in 900 s")
        for text in queries[:5]:  # warm the quiet deployment
            r = quiet.client.post("/v1/namespaces/quiet/retrievers/feature_search",
                                  json={"collection_id": quiet.collection_id, "query": {"text": text}, "limit": 10})
            assert r.status_code == 200, r.text
        print(f"server: namespaces flood and quiet, {PLUGIN} deployed in both, {args.seed} quiet seed documents ingested "
              f"in {time.perf_counter() - started:.1f}s; logs under {work}")

        phases = []
        expected = args.seed
        for name, seconds, users in (("alone", args.alone, 0), ("flood", args.flood, args.flood_users)):
            phase = run_phase(name, seconds, users, quiet, flood, shared, work)
            phases.append(phase)
            # The object still pending at the phase's end belongs to the phase: wait for it (and so
            # start the next phase with none in flight) and count it, noting that it landed late.
            expected += phase["quiet"]["confirmed"]
            if not quiet.wait_documents(expected, args.drain, args.poll):
                phase["drain_note"] = f"{quiet.document_count()} of {expected} documents after {args.drain:.0f}s of draining"
            elif phase["quiet"]["pending_s"]:
                after = time.time() - phase["quiet"]["stopped_at"]
                late = phase["quiet"]["pending_s"][-1] + after
                phase["quiet"]["ingest_ms"].append(late * 1000)
                phase["drain_note"] = (f"of which 1 was pending at the phase's end and landed {after:.1f}s after it, "
                                       f"{late:.1f}s after its upload request")
            phase["quiet_tasks"] = quiet_tasks(phase, quiet)
            report(phase)

        alone, under = phases[0]["quiet"], phases[1]["quiet"]
        print("\nquiet tenant, under flood / alone:")
        for label, a, b, q in (("ingest p50", alone["ingest_ms"], under["ingest_ms"], 50),
                               ("search p50", alone["search_ms"], under["search_ms"], 50),
                               ("search p99", alone["search_ms"], under["search_ms"], 99)):
            if a and b:
                print(f"  {label}: {percentile(b, q):8.0f} / {percentile(a, q):8.0f} ms = {percentile(b, q) / percentile(a, q):6.2f}x")
            else:
                print(f"  {label}: - (no completed {label.split()[0]} in a phase)")
        problems = [f"phase {p['name']}: the quiet tenant completed no ingest" for p in phases if not p["quiet"]["ingest_ms"]]
        if under["search_errors"]:
            problems.append(f"{len(under['search_errors'])} quiet searches failed under flood")
        failed = bool(problems)
        print("\n" + ("FAILED: " + "; ".join(problems) if failed
                      else "target met: the quiet tenant's ingest and searches completed under flood"))
        quiet.close()
        flood.close()
    finally:
        server.stop()
        if args.keep or failed:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
