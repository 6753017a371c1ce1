"""Fault injection against the real `sluice up`: start the stack as a user does, drive work through
the CLI, REST and the drop folder, `kill -9` the whole stack (or stop the broker, or kill a Ray
worker) at a chosen or random moment, start it again on the same data dir, wait until nothing is
left in flight, and count what the catalog holds against a clean run of the same input.

Used by `tests/e2e/test_faults.py` (a few trials, sized for CI) and `bench/faults.py` (many trials,
random kill points). Nothing here changes the product: it only starts `sluice up`, calls it, and
reads its SQLite catalog (read-only queries; WAL lets them run beside the stack).

What a trial counts (`Census`), per collection:
- objects in the bucket (the local object store's files) and their `ingested_objects` records;
- documents, and duplicates: two documents of one object and one plugin document id (so of two
  versions of the same bytes), or more documents than the clean run;
- lost objects: in the bucket (or acknowledged to the client) with no `written` record;
- stuck records: an ingest task QUEUED or RUNNING, a queue entry or ingest lease left over, a plugin
  upload CONFIRMED (or SCANNED, a status nothing writes today), a model VALIDATING, a deployment
  QUEUED, PENDING or IN_PROGRESS, an outbox entry never relayed, an idempotency claim never
  completed — once the stack had time to recover (`wait_quiescent`);
- and whether the stack still stops on Ctrl-C (`ctrl_c`): a stack that does not is stalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
SLUICE = [sys.executable, "-m", "functions.cli"]
NAMESPACE = "acme"
BUCKET = "notes"
COLLECTION = "notes"
PLUGIN = "hash_embedder"
DEPLOYABLE = "hash_deployable"
PLUGIN_SOURCE = ROOT / "tests" / "plugins" / "fixtures" / "hash_embedder"
SLOW_S = 0.15
"""Seconds the trials' plugin spends per object, so a job of a dozen objects is long enough to be
killed in the middle (the plain hash embedder answers in microseconds)."""

FAST_ENV = {
    "SLUICE_RAY_NUM_CPUS": "1",  # the machine has 2 cores; this stack shares them with the test
    "SLUICE_INGEST_MAX_DELAY_S": "0.5",  # a burst becomes a task sooner
    "SLUICE_INGEST_RECONCILE_S": "5",  # the reconciler looks for leftovers every 5 s, not every minute
    "SLUICE_INGEST_RETRY_BASE_S": "0.5",
    "SLUICE_UPLOAD_SWEEP_INTERVAL_S": "3600",
    "SLUICE_LOG_JSON": "true",
}
"""Settings that make a trial fast without changing what is tested (timings, not behaviour)."""

INTERMEDIATE = {
    "tasks": ("QUEUED", "RUNNING"),
    "plugin_uploads": ("CONFIRMED", "SCANNED"),
    "models": ("VALIDATING",),
    "plugin_deployments": ("QUEUED", "PENDING", "IN_PROGRESS"),
}
"""Statuses a record may hold only while some process works on it (functions/records/status.py)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sluice_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell without any SLUICE_ setting, plus the fast timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k != "RAY_ADDRESS"}
    return env | FAST_ENV | extra


# --- the stack ----------------------------------------------------------------------------------

class Sluice:
    """One `sluice up` on `data_dir`, in a session of its own, so `kill9` ends it with every
    process it started — Ray's GCS, raylet and workers in that session, plugin hosts (which start
    sessions of their own) as their descendants: `kill -9` of the stack."""

    def __init__(self, data_dir: Path, port: int, *, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.data_dir, self.port = data_dir, port
        self.env = sluice_env(**(env or {}))
        self.log = log or data_dir.parent / f"{data_dir.name}.up.log"
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._triggers: list[tuple[Callable[[str], bool], Callable[[], None]]] = []
        self._lock = threading.Lock()
        self.started_at = 0.0
        self.runs = 0

    # life

    def start(self, timeout: float = 180.0) -> Sluice:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        self.mark(f"start #{self.runs}")
        since = len(self.lines)
        self.proc = subprocess.Popen(
            [*SLUICE, "up", "--data-dir", str(self.data_dir), "--port", str(self.port)], cwd=ROOT, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.started_at = time.monotonic()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.wait_line("sluice: serving", timeout=timeout, since=since)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append(line)
                with open(self.log, "a", encoding="utf-8") as out:
                    out.write(line)
                fired = [t for t in self._triggers if t[0](line)]
                for t in fired:
                    self._triggers.remove(t)
            for _, action in fired:  # outside the lock: an action may kill the stack, which logs a mark
                action()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def session_pids(self) -> list[int]:
        """Every process of the stack's session (the `sluice up` process leads it)."""
        if self.proc is None:
            return []
        sid, pids = self.proc.pid, []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z" and os.getsid(int(entry)) == sid:  # a zombie is dead
                        pids.append(int(entry))
        return pids

    def stack_pids(self) -> list[int]:
        """The session's processes and their descendants in other sessions (plugin hosts start
        their own: they die with their owner, but a sweep must not count on it)."""
        pids = set(self.session_pids())
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if fields[0] != "Z":
                        children.setdefault(int(fields[1]), []).append(int(entry))
        todo = list(pids)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in pids:
                    pids.add(child)
                    todo.append(child)
        return sorted(pids)

    def kill9(self) -> float:
        """SIGKILL every process of the stack at once; returns when they are gone, with the time
        since the start."""
        at = time.monotonic() - self.started_at
        killed = 0
        for _ in range(50):
            pids = self.stack_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.1)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if killed:  # a sweep after a clean stop finds nothing: no mark
            self.mark(f"kill -9 at {at:.2f}s ({killed} processes)")
        with self._lock:
            self._triggers.clear()
        return at

    def mark(self, what: str) -> None:
        """A line of the harness's own in the stack's log: `----- what -----`."""
        line = f"----- {what} -----\n"
        with self._lock:
            self.lines.append(line)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as out:
                out.write(line)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Ctrl-C, as a user stops it; anything left of its session is killed after."""
        code = None
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()
        return code

    # watching

    def tail(self, n: int = 60) -> str:
        with self._lock:
            return "".join(self.lines[-n:])

    def wait_line(self, needle: str, timeout: float = 120.0, *, since: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.lines[since:]:
                    if needle in line:
                        return line
            if not self.alive:
                break
            time.sleep(0.05)
        raise AssertionError(f"`sluice up` never printed {needle!r} within {timeout:.0f}s:\n{self.tail()}")

    def on_line(self, needle: str, action: Callable[[], None]) -> None:
        """Run `action` (in the reader thread) as soon as a line holding `needle` is printed."""
        with self._lock:
            self._triggers.append((lambda line: needle in line, action))

    # calling

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def cli(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        env = sluice_env(SLUICE_URL=self.url)
        return subprocess.run([*SLUICE, "--data-dir", str(self.data_dir), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        env = sluice_env(SLUICE_URL=self.url)
        return subprocess.Popen([*SLUICE, "--data-dir", str(self.data_dir), *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @property
    def catalog(self) -> CatalogReader:
        return CatalogReader(self.data_dir / "catalog.sqlite3")


@contextlib.contextmanager
def running(data_dir: Path, port: int | None = None, **options: Any) -> Iterator[Sluice]:
    """A started stack that is stopped (and its session killed) whatever happens."""
    stack = Sluice(data_dir, port or free_port(), **options)
    try:
        yield stack.start()
    finally:
        stack.stop()


# --- the catalog, read beside the stack ---------------------------------------------------------

class CatalogReader:
    """Read-only queries on the SQLite catalog (`infra/catalog/sqlite.py`: one table `kind_<kind>`
    of JSON documents per kind). A short connection per call: never holds a lock on the stack."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def find(self, kind: str) -> list[dict]:
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)) as db:
            try:
                rows = db.execute(f'SELECT doc FROM "kind_{kind}"').fetchall()  # kind: ours, not input
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
        return [json.loads(doc) for (doc,) in rows]

    def one(self, kind: str, key: str) -> dict | None:
        return next((d for d in self.find(kind) if d.get("id") == key), None)


# --- inputs -------------------------------------------------------------------------------------

def texts(n: int, *, seed: int = 0) -> dict[str, str]:
    """`n` small distinct text objects, by key."""
    words = ["river", "sluice", "gate", "lock", "weir", "canal", "boat", "water", "level", "dam", "flow", "bank"]
    rng = random.Random(seed)
    return {f"batch/{i:03d}.txt": f"note {i}: " + " ".join(rng.choice(words) for _ in range(24)) for i in range(n)}


def drop(data_dir: Path, items: dict[str, str], *, namespace: str = NAMESPACE, bucket: str = BUCKET) -> None:
    """Into the drop folder, each file complete at once (written beside, then renamed)."""
    for key, text in items.items():
        path = data_dir / "drop" / namespace / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        part.write_text(text)
        os.replace(part, path)


def write_folder(folder: Path, items: dict[str, str]) -> Path:
    for key, text in items.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_text(text)
    return folder


def slow_plugin(dest: Path, *, seconds: float = SLOW_S, version: str = "1.0.0", name: str = PLUGIN) -> Path:
    """The hash embedder fixture, `seconds` slower per object, as a folder `sluice plugin push` takes."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PLUGIN_SOURCE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    hashing = dest / "processors" / "hashing.py"
    source = hashing.read_text()
    source = source.replace("import math\n", "import math\nimport time\n", 1)
    source = source.replace("        vector = [0.0] * self.dim\n",
                            f"        time.sleep({seconds!r})\n        vector = [0.0] * self.dim\n", 1)
    assert "time.sleep" in source, "the hash embedder fixture changed: update slow_plugin"
    hashing.write_text(source)
    manifest = dest / "manifest.py"
    manifest.write_text(manifest.read_text().replace('"version": "1.0.0"', f'"version": "{version}"')
                        .replace('"feature_extractor_name": "hash_embedder"', f'"feature_extractor_name": "{name}"'))
    return dest


# --- what the catalog holds ---------------------------------------------------------------------

@dataclass
class Census:
    """What one data dir holds for the trial's collection once the stack settled."""

    objects: list[str] = field(default_factory=list)
    """Keys in the bucket (the local object store)."""
    written: list[str] = field(default_factory=list)
    """Keys whose `ingested_objects` record says written."""
    documents: int = 0
    vectors: int | None = None
    """Points in the collection's index as REST reports them (None when the stack was not up)."""
    duplicates: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    """Uploads a client created but never confirmed (it was killed first): not stuck, swept later."""
    tasks: Counter[str] = field(default_factory=Counter)
    plugin_status: dict[str, str] = field(default_factory=dict)
    deployment_status: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (f"objects={len(self.objects)} written={len(self.written)} documents={self.documents} "
                f"vectors={self.vectors} lost={len(self.lost)} duplicated={len(self.duplicates)} stuck={len(self.stuck)} "
                f"tasks={dict(self.tasks)}")


def bucket_keys(data_dir: Path, *, namespace: str = NAMESPACE, bucket: str = BUCKET, data_bucket: str = "sluice-data") -> list[str]:
    root = data_dir / "objects" / data_bucket / namespace / bucket
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and ".sluice" not in p.relative_to(root).parts)


def census(stack: Sluice, collection_id: str | None, *, expected: list[str] | None = None) -> Census:
    """Count what the catalog holds; `expected` are keys the client was told are in (they must be
    written even when the object store has no file: that is a lost acknowledged object)."""
    cat = stack.catalog
    c = Census(objects=bucket_keys(stack.data_dir))
    if collection_id is not None:
        records = [r for r in cat.find("ingested_objects") if r.get("collection_id") == collection_id]
        c.written = sorted(r["key"] for r in records if r.get("status") == "written")
        docs = [d for d in cat.find("documents") if d.get("collection_id") == collection_id]
        c.documents = len(docs)
        per_chunk = Counter((d["source"]["bucket"], d["source"]["key"], d.get("plugin_document_id")) for d in docs)
        c.duplicates = sorted(f"{b}/{k} ({n} documents for plugin document {p!r})" for (b, k, p), n in per_chunk.items() if n > 1)
        versions: dict[str, set[str]] = {}
        for d in docs:
            versions.setdefault(d["source"]["key"], set()).add(str(d["source"].get("version")))
        c.duplicates += sorted(f"{k} (documents of {len(v)} versions)" for k, v in versions.items() if len(v) > 1)
        for key in sorted(set(c.objects) | set(expected or [])):
            if key not in c.written:
                state = next((r.get("status") for r in records if r["key"] == key), None)
                where = "in the bucket" if key in c.objects else "acknowledged but not in the bucket"
                c.lost.append(f"{key} ({where}; ingested record: {state or 'none'})")
        c.tasks = Counter(t["status"] for t in cat.find("tasks") if t.get("collection_id") == collection_id)
        if stack.alive:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                detail = stack.api("GET", f"/v1/namespaces/{NAMESPACE}/collections/{collection_id}").json()
                c.vectors = sum(i.get("vector_count") or 0 for i in detail["vector_indexes"])
    c.stuck = stuck(cat)
    c.abandoned = [f"plugin upload {u['upload_id']} AWAITING_UPLOAD" for u in cat.find("plugin_uploads")
                   if u.get("status") == "AWAITING_UPLOAD"]
    c.plugin_status = {u["upload_id"]: u["status"] for u in cat.find("plugin_uploads")}
    c.deployment_status = {d["plugin_id"]: d["status"] for d in cat.find("plugin_deployments")}
    return c


def stuck(cat: CatalogReader) -> list[str]:
    """Records in an intermediate state, and leftovers of unfinished work."""
    found = []
    for kind, statuses in INTERMEDIATE.items():
        for record in cat.find(kind):
            if record.get("status") in statuses:
                ident = next((record[k] for k in ("task_id", "upload_id", "plugin_id", "model_id") if record.get(k)), record["id"])
                found.append(f"{kind} {ident} {record['status']}")
    for entry in cat.find("ingest_queue"):
        found.append(f"ingest_queue {entry['id']} claimed_by={entry.get('claimed_by')}")
    for lease in cat.find("ingest_leases"):
        found.append(f"ingest_leases {lease['id']} task={lease.get('task_id')} owner={lease.get('owner')}")
    for entry in cat.find("outbox"):
        found.append(f"outbox {entry['id']} {entry.get('type') or ''}".rstrip())
    for claim in cat.find("idempotency"):
        if claim.get("status") == "IN_PROGRESS":
            found.append(f"idempotency {claim['id']} IN_PROGRESS")
    return found


def wait_quiescent(stack: Sluice, collection_id: str | None, *, expected: list[str], timeout: float = 150.0,
                   settled: Callable[[Census], bool] | None = None, allow_lost: bool = False) -> Census:
    """Poll until every expected object is written and nothing is in flight, twice in a row (or
    the timeout: then the census says what is lost or stuck)."""
    deadline = time.monotonic() + timeout
    calm = 0
    last = census(stack, collection_id, expected=expected)
    while time.monotonic() < deadline:
        last = census(stack, collection_id, expected=expected)
        done = (not last.stuck and (allow_lost or not last.lost) and set(expected) <= set(last.written)
                and (settled is None or settled(last)))
        calm = calm + 1 if done else 0
        if calm >= 2:
            return last
        if not stack.alive:
            raise AssertionError(f"`sluice up` died while recovering:\n{stack.tail()}")
        time.sleep(0.5)
    return last


def compare(clean: Census, trial: Census) -> list[str]:
    """What a trial got wrong against the clean run of the same input."""
    problems = []
    if trial.lost:
        problems.append(f"{len(trial.lost)} lost: {trial.lost[:5]}")
    if trial.duplicates:
        problems.append(f"{len(trial.duplicates)} duplicated: {trial.duplicates[:5]}")
    if trial.documents > clean.documents:
        problems.append(f"{trial.documents - clean.documents} more documents than the clean run ({clean.documents})")
    elif trial.documents < clean.documents:
        problems.append(f"{clean.documents - trial.documents} fewer documents than the clean run ({clean.documents})")
    if sorted(trial.written) != sorted(clean.written):
        problems.append(f"written objects differ from the clean run: {len(trial.written)} vs {len(clean.written)}")
    if trial.vectors is not None and clean.vectors is not None and trial.vectors != clean.vectors:
        problems.append(f"{trial.vectors} vectors, clean run {clean.vectors}")
    if trial.stuck:
        problems.append(f"{len(trial.stuck)} stuck: {trial.stuck[:6]}")
    return problems


STOP_S = 30.0


def ctrl_c(stack: Sluice, timeout: float = STOP_S) -> list[str]:
    """Stop the stack as a user does; a stack that does not stop is stalled (then it is killed)."""
    began = time.monotonic()
    code = stack.stop(timeout=timeout)
    if code is None:
        return [f"`sluice up` did not stop within {timeout:g}s of Ctrl-C (killed)"]
    stack.mark(f"stopped by Ctrl-C in {time.monotonic() - began:.1f}s, exit {code}")
    return []


# --- a seeded data dir: namespace, plugin, collection -------------------------------------------

@dataclass
class Seed:
    """A stopped data dir with namespace `acme`, the slow hash embedder registered and a
    collection over bucket `notes`; trials copy it (`fork`) instead of seeding each time."""

    data_dir: Path
    collection_id: str
    plugin_id: str
    plugin_folder: Path
    deployable_id: str
    """A second plugin (`DEPLOYABLE`), registered and never deployed: what the deploy trial deploys
    (creating the collection deployed the first one)."""

    def fork(self, dest: Path) -> Path:
        shutil.copytree(self.data_dir, dest, ignore=shutil.ignore_patterns("*.up.log"))
        return dest

    def save(self) -> None:
        (self.data_dir.parent / "seed.json").write_text(json.dumps({
            "data_dir": str(self.data_dir), "collection_id": self.collection_id, "plugin_id": self.plugin_id,
            "plugin_folder": str(self.plugin_folder), "deployable_id": self.deployable_id}))

    @classmethod
    def load(cls, workdir: Path) -> Seed | None:
        """The seed an earlier run left in `workdir`, if any."""
        saved = workdir / "seed.json"
        if not saved.is_file():
            return None
        fields = json.loads(saved.read_text())
        return cls(Path(fields["data_dir"]), fields["collection_id"], fields["plugin_id"], Path(fields["plugin_folder"]),
                   fields["deployable_id"])


def seed(workdir: Path, *, env: dict[str, str] | None = None) -> Seed:
    data_dir = workdir / "seed"
    folder = slow_plugin(workdir / "plugin" / PLUGIN)
    with running(data_dir, env=env) as stack:
        made = stack.cli("namespace", "create", NAMESPACE)
        assert made.returncode == 0, made.stderr
        pushed = stack.cli("plugin", "push", str(folder), "-n", NAMESPACE, "--json")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        plugin_id = json.loads(pushed.stdout)["plugin_id"]
        created = stack.api("POST", f"/v1/namespaces/{NAMESPACE}/collections", json={
            "collection_name": COLLECTION, "source": {"bucket": BUCKET, "prefix": ""},
            "feature_extractor": {"feature_extractor_name": PLUGIN}})
        assert created.status_code == 201, created.text
        other = slow_plugin(workdir / "plugin" / DEPLOYABLE, name=DEPLOYABLE)
        pushed = stack.cli("plugin", "push", str(other), "-n", NAMESPACE, "--json")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        deployable_id = json.loads(pushed.stdout)["plugin_id"]
    made_seed = Seed(data_dir, created.json()["collection_id"], plugin_id, folder, deployable_id)
    made_seed.save()
    return made_seed


# --- trials -------------------------------------------------------------------------------------

@dataclass
class Trial:
    """One trial's outcome, one row of a report."""

    name: str
    point: str
    killed_at: float | None
    census: Census
    problems: list[str]
    seconds: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> str:
        c = self.census
        at = f"{self.killed_at:6.2f}s" if self.killed_at is not None else "   -   "
        return (f"{self.name:<22} {self.point:<18} {at} lost={len(c.lost):<2} dup={len(c.duplicates):<2} "
                f"stuck={len(c.stuck):<2} docs={c.documents:<3} {'ok' if self.ok else 'FAIL: ' + '; '.join(self.problems)}"
                + (f"  [{self.note}]" if self.note else ""))


def clean_run(seed_: Seed, workdir: Path, items: dict[str, str], *, source: str = "drop",
              env: dict[str, str] | None = None) -> tuple[Census, float]:
    """The same input without faults: the census every trial is compared with, and how long the
    ingest took from the first drop (random kill points fall within it)."""
    data_dir = seed_.fork(workdir / "clean")
    with running(data_dir, env=env) as stack:
        began = time.monotonic()
        feed(stack, items, source=source, folder=workdir / "clean-input")
        result = wait_quiescent(stack, seed_.collection_id, expected=sorted(items))
        took = time.monotonic() - began
    assert not result.lost and not result.stuck and len(result.written) == len(items), result.line()
    return result, took


def feed(stack: Sluice, items: dict[str, str], *, source: str, folder: Path) -> subprocess.Popen[str] | None:
    """Hand the input to the stack: dropped files, or `sluice ingest` of a folder (started in the
    background and returned, so the stack can be killed while it uploads)."""
    if source == "drop":
        drop(stack.data_dir, items)
        return None
    if source == "cli":
        write_folder(folder, items)
        return stack.cli_background("ingest", str(folder), "--bucket", BUCKET, "-n", NAMESPACE, "--json", "--no-progress")
    raise ValueError(f"unknown source {source!r}")


KILL_POINTS = {
    # each names a stage of ingest: a line `sluice up` prints, or a state of the catalog or of Ray
    "dropped": ("line", '"drop.taken"'),
    "queued": ("line", '"ingest.queued"'),
    "task_created": ("line", '"ingest.task_created"'),
    "running": ("state", "a task is RUNNING"),
    "mid_job": ("state", "an ingest actor's worker is up and not every document is written"),
    "completed": ("line", '"ingest.completed"'),
}


def _reached(stack: Sluice, point: str, collection_id: str, total: int) -> bool:
    tasks = [t for t in stack.catalog.find("tasks") if t.get("collection_id") == collection_id]
    if point == "running":
        return any(t["status"] == "RUNNING" for t in tasks)
    docs = sum(1 for d in stack.catalog.find("documents") if d.get("collection_id") == collection_id)
    return docs < total and any(t["status"] == "RUNNING" for t in tasks) and bool(ray_workers(stack))


class Killer:
    """`kill -9` of a stack once, at the first of the moments it was armed with; `close()` disarms
    it (a timer or watcher that fires later does nothing) and says when the kill happened."""

    def __init__(self, stack: Sluice) -> None:
        self.stack = stack
        self.armed = time.monotonic()
        self.killed_at: float | None = None
        """Seconds from arming (the stack serving, the work about to start) to the kill."""
        self.seen: Any = None
        self.done = threading.Event()
        self._gate = threading.Lock()
        self._closed = False

    def __call__(self) -> None:
        with self._gate:
            if self._closed:
                return
            self.stack.kill9()
            self.killed_at = time.monotonic() - self.armed
            self._closed = True
            self.done.set()

    def after(self, delay: float, why: str = "") -> None:
        self.stack.mark(f"kill point {why or 'after'}: in {delay:.2f}s")
        timer = threading.Timer(delay, self)
        timer.daemon = True
        timer.start()

    def on_line(self, needle: str, why: str = "") -> None:
        self.stack.mark(f"kill point {why}: at the first {needle}")
        self.stack.on_line(needle, self)

    def when(self, condition: Callable[[], Any], why: str, every: float = 0.02) -> None:
        """Kill once `condition()` returns something true (kept as `seen`, for the report)."""
        self.stack.mark(f"kill point {why}")

        def watch() -> None:
            while not self.done.is_set() and self.stack.alive:
                with contextlib.suppress(sqlite3.Error):
                    seen = condition()
                    if seen:
                        self.seen = seen
                        self()
                        return
                time.sleep(every)

        threading.Thread(target=watch, daemon=True).start()

    def close(self, timeout: float = 0.0, *, unless: Callable[[], bool] | None = None) -> float | None:
        """Wait up to `timeout` for the kill (stop waiting when `unless()` holds), then disarm."""
        deadline = time.monotonic() + timeout
        while not self.done.wait(0.25) and time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.Error):
                if unless is not None and unless():
                    break
        with self._gate:
            self._closed = True
        return self.killed_at


def arm_kill(stack: Sluice, point: str, *, rng: random.Random, window: float, collection_id: str, total: int) -> Killer:
    """A `Killer` armed at `point` of an ingest: a named stage (KILL_POINTS), `random` (a uniform
    delay within `window` seconds from now), or `after:S`."""
    killer = Killer(stack)
    if point == "random" or point.startswith("after:"):
        killer.after(rng.uniform(0, window) if point == "random" else float(point.split(":", 1)[1]), point)
    elif KILL_POINTS[point][0] == "line":
        killer.on_line(KILL_POINTS[point][1], point)
    else:
        killer.when(lambda: _reached(stack, point, collection_id, total), f"{point}: when {KILL_POINTS[point][1]}")
    return killer


def _all_written(stack: Sluice, collection_id: str, total: int) -> bool:
    written = [r for r in stack.catalog.find("ingested_objects") if r.get("collection_id") == collection_id]
    return len(written) >= total and not stack.catalog.find("ingest_queue")


def ingest_kill_trial(seed_: Seed, workdir: Path, items: dict[str, str], clean: Census, *, point: str,
                      rng: random.Random, window: float, source: str = "drop", env: dict[str, str] | None = None,
                      then: tuple[str, ...] = ()) -> Trial:
    """(a) `kill -9` of the stack at `point` while `items` are ingested, then restart on the same
    data dir; with `then`, the restarted stack is killed again at each of those points in turn (a
    task resumed after a crash, crashing again). A CLI upload cut short is run again, as a user would."""
    began = time.monotonic()
    data_dir = seed_.fork(workdir / "data")
    stack = Sluice(data_dir, free_port(), env=env)
    notes: list[str] = []
    kills: list[str] = []
    try:
        stack.start()
        killer = arm_kill(stack, point, rng=rng, window=window, collection_id=seed_.collection_id, total=len(items))
        uploader = feed(stack, items, source=source, folder=workdir / "input")
        killed_at = killer.close(window + 120, unless=lambda: _all_written(stack, seed_.collection_id, len(items)))
        if killed_at is None:
            notes.append(f"point {point!r} never came; killed at the end")
            killed_at = stack.kill9()
        kills.append(f"{point}@{killed_at:.2f}s")
        if uploader is not None:
            uploader.communicate(timeout=120)
            if uploader.returncode != 0:
                notes.append("the upload was cut short and is run again")
        for again in then:
            stack.start()
            killer = arm_kill(stack, again, rng=rng, window=window, collection_id=seed_.collection_id, total=len(items))
            at = killer.close(window + 60, unless=lambda: _all_written(stack, seed_.collection_id, len(items)))
            kills.append(f"{again}@{at:.2f}s" if at is not None else f"{again}: never came")
            if at is None:
                stack.kill9()
        stack.start()
        if uploader is not None and uploader.returncode != 0:
            rerun = stack.cli("ingest", str(workdir / "input"), "--bucket", BUCKET, "-n", NAMESPACE, "--json", "--no-progress")
            assert rerun.returncode == 0, rerun.stderr
        result = wait_quiescent(stack, seed_.collection_id, expected=sorted(items))
        problems = compare(clean, result) + ctrl_c(stack)
        if then:
            notes.append("kills: " + ", ".join(kills))
        tasks = [t for t in stack.catalog.find("tasks") if t.get("collection_id") == seed_.collection_id]
        notes += [f"task {t['task_id']} {t['status']} (resumed {t.get('resumed', 0)}, attempts {t.get('attempts')}): "
                  f"{str(t.get('reason'))[:160]}" for t in tasks if t["status"] != "COMPLETED"]
        return Trial(f"ingest/{source}", "+".join((point, *then)), killed_at, result, problems, time.monotonic() - began,
                     "; ".join(notes))
    finally:
        stack.stop()


UPLOAD_ORDER = ("AWAITING_UPLOAD", "CONFIRMED", "REGISTERED")
DEPLOY_ORDER = ("QUEUED", "PENDING", "IN_PROGRESS", "DEPLOYED")


def _between(status: str | None, first: str, last: str, order: tuple[str, ...]) -> bool:
    """`status` is `first` or past it, and before `last` (a short status may pass between two polls)."""
    return status in order and order.index(first) <= order.index(status) < order.index(last)


def push_kill_trial(seed_: Seed, workdir: Path, *, point: str, rng: random.Random, window: float,
                    env: dict[str, str] | None = None) -> Trial:
    """(b) `kill -9` during `sluice plugin push` of a new version — once the upload is `CONFIRMED`,
    once `scanned` (scan done, register running), or at a `random` moment — and restart: the upload
    ends REGISTERED (or FAILED with its reasons), never CONFIRMED; the version is registered once.
    A push the client saw fail before its confirm was stored is pushed again."""
    began = time.monotonic()
    data_dir = seed_.fork(workdir / "data")
    folder = slow_plugin(workdir / "plugin" / PLUGIN, version="1.0.1")
    stack = Sluice(data_dir, free_port(), env=env)
    try:
        stack.start()
        killer = Killer(stack)
        if point == "random":
            killer.after(rng.uniform(0, window), point)
        elif point == "scanned":  # the upload stays CONFIRMED from confirm to register's outcome
            killer.on_line('"plugin.scanned"', point)
        elif point in UPLOAD_ORDER:
            def upload_reached() -> str | None:
                statuses = [u.get("status") for u in stack.catalog.find("plugin_uploads") if u.get("version") == "1.0.1"]
                return next((st for st in statuses if _between(st, point, "REGISTERED", UPLOAD_ORDER)), None)
            killer.when(upload_reached, f"upload {point} (or later, before REGISTERED)", every=0.01)
        else:
            raise ValueError(f"unknown push kill point {point!r}")
        pusher = stack.cli_background("plugin", "push", str(folder), "-n", NAMESPACE, "--json")
        pusher.communicate(timeout=window + 120)
        killed_at = killer.close(5)
        note = f"killed at {killer.seen}" if killer.seen else ""
        if killed_at is None:
            note = f"point {point!r} came after the push ended (rc={pusher.returncode}); killed then"
            killed_at = stack.kill9()
        stack.start()
        uploads = [u for u in stack.catalog.find("plugin_uploads") if u.get("version") == "1.0.1"]
        if not any(u.get("status") not in ("AWAITING_UPLOAD", "EXPIRED") for u in uploads):
            note = (note + "; " if note else "") + "the confirm never landed: pushed again"
            again = stack.cli("plugin", "push", str(folder), "-n", NAMESPACE, "--json")
            assert again.returncode == 0, again.stdout + again.stderr

        def registered(_: Census) -> bool:
            return any(u.get("status") in ("REGISTERED", "FAILED") for u in stack.catalog.find("plugin_uploads")
                       if u.get("version") == "1.0.1")

        result = wait_quiescent(stack, None, expected=[], timeout=150, settled=registered)
        versions = [v for v in stack.catalog.find("plugin_versions") if v.get("plugin_name") == PLUGIN and v.get("version") == "1.0.1"]
        ours = [u for u in stack.catalog.find("plugin_uploads") if u.get("version") == "1.0.1"]
        problems = [f"stuck: {s}" for s in result.stuck]
        outcomes = Counter(u["status"] for u in ours)
        if outcomes["REGISTERED"] != 1 and not (outcomes["FAILED"] and all(u.get("validation_errors") or u.get("error")
                                                                            for u in ours if u["status"] == "FAILED")):
            problems.append(f"uploads of 1.0.1 ended {dict(outcomes)}, not one REGISTERED (or FAILED with reasons)")
        if len(versions) != 1:
            problems.append(f"{len(versions)} registered versions 1.0.1")
        note = (note + "; " if note else "") + f"uploads {dict(outcomes)}"
        problems += ctrl_c(stack)
        return Trial("push", point, killed_at, result, problems, time.monotonic() - began, note)
    finally:
        stack.stop()


def deploy_kill_trial(seed_: Seed, workdir: Path, *, point: str, rng: random.Random, window: float,
                      env: dict[str, str] | None = None) -> Trial:
    """(c) `kill -9` during `sluice plugin deploy`, restart: the deployment ends DEPLOYED (the
    reconciler at start queues it again) and answers a query, or FAILED with its error; never
    QUEUED, PENDING or IN_PROGRESS."""
    began = time.monotonic()
    data_dir = seed_.fork(workdir / "data")
    stack = Sluice(data_dir, free_port(), env=env)
    try:
        stack.start()
        killer = Killer(stack)
        if point == "random":
            killer.after(rng.uniform(0, window), point)
        else:
            def deploy_reached() -> str | None:
                status = (stack.catalog.one("plugin_deployments", seed_.deployable_id) or {}).get("status")
                return status if _between(status, point, "DEPLOYED", DEPLOY_ORDER) else None
            killer.when(deploy_reached, f"deployment {point} (or later, before DEPLOYED)", every=0.01)
        deployer = stack.cli_background("plugin", "deploy", DEPLOYABLE, "-n", NAMESPACE, "--json")
        deployer.communicate(timeout=window + 240)
        killed_at = killer.close(5)
        note = f"killed at {killer.seen}" if killer.seen else ""
        if killed_at is None:
            note = f"point {point!r} came after the deploy ended (rc={deployer.returncode}); killed then"
            killed_at = stack.kill9()
        stack.start()
        record = stack.catalog.one("plugin_deployments", seed_.deployable_id)
        if record is None:
            note = (note + "; " if note else "") + "the deploy request never landed: deployed again"
            again = stack.cli("plugin", "deploy", DEPLOYABLE, "-n", NAMESPACE, "--json")
            assert again.returncode in (0, 1), again.stdout + again.stderr

        def settled(c: Census) -> bool:
            return c.deployment_status.get(seed_.deployable_id) in ("DEPLOYED", "FAILED")

        result = wait_quiescent(stack, None, expected=[], timeout=240, settled=settled)
        problems = [f"stuck: {s}" for s in result.stuck]
        status = result.deployment_status.get(seed_.deployable_id)
        record = stack.catalog.one("plugin_deployments", seed_.deployable_id) or {}
        if status == "DEPLOYED":
            answer = stack.api("POST", f"/v1/namespaces/{NAMESPACE}/plugins/{seed_.deployable_id}/realtime",
                               json={"inputs": {"text": "river gate"}, "parameters": {}}, timeout=120)
            if answer.status_code != 200:
                problems.append(f"DEPLOYED but the endpoint answered {answer.status_code}: {answer.text[:200]}")
        elif status == "FAILED":
            if not record.get("error"):
                problems.append("FAILED without an error")
            note = (note + "; " if note else "") + f"FAILED: {str(record.get('error'))[:120]}"
        else:
            problems.append(f"deployment ended {status}")
        problems += ctrl_c(stack)
        return Trial("deploy", point, killed_at, result, problems, time.monotonic() - began, note)
    finally:
        stack.stop()


# --- a Ray worker killed mid-job -------------------------------------------------------------------

def ray_workers(stack: Sluice) -> list[tuple[int, str]]:
    """(pid, title) of the stack's Ray workers that run an ingest actor once its constructor is
    done: a pipeline's (`ray::MapWorker(MapBatches(PluginStage))`) or a warm pool's
    (`ray::WarmStage`), the title ending in the method it runs."""
    found = []
    for pid in stack.session_pids():
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            pipeline = title.startswith("ray::MapWorker(") and "PluginStage" in title
            if (pipeline or title.startswith("ray::WarmStage")) and not title.endswith(".__init__"):
                found.append((pid, title))
    return found


def worker_kill_trial(seed_: Seed, workdir: Path, items: dict[str, str], clean: Census, *, rng: random.Random,
                      env: dict[str, str] | None = None, within: float = 1.0) -> Trial:
    """(e) `kill -9` of the Ray worker running the plugin's actor while it works on the batch
    (a random moment within `within` seconds of its first call), the stack itself staying up: the
    task must still end COMPLETED with the clean run's counts."""
    began = time.monotonic()
    data_dir = seed_.fork(workdir / "data")
    stack = Sluice(data_dir, free_port(), env=env)
    try:
        stack.start()
        armed = time.monotonic()
        stack.mark("kill point: the ingest actor's worker, mid-job")
        drop(stack.data_dir, items)
        note, killed_at, victim = "", None, ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not victim:
            if _all_written(stack, seed_.collection_id, len(items)):
                break
            workers = ray_workers(stack)
            if workers:
                time.sleep(rng.uniform(0, within))
                docs = sum(1 for d in stack.catalog.find("documents") if d.get("collection_id") == seed_.collection_id)
                pid, title = workers[0]
                if docs >= len(items):
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic() - armed
                victim = f"killed {title} (pid {pid}) with {docs}/{len(items)} documents written"
                stack.mark(f"{victim} at {killed_at:.2f}s")
            time.sleep(0.02)
        if not victim:
            note = "the job ended before a worker could be killed"
        result = wait_quiescent(stack, seed_.collection_id, expected=sorted(items))
        tasks = [t for t in stack.catalog.find("tasks") if t.get("collection_id") == seed_.collection_id]
        problems = compare(clean, result)
        bad = [f"{t['task_id']} {t['status']}: {t.get('reason')}" for t in tasks if t["status"] != "COMPLETED"]
        if bad:
            problems.append(f"tasks not COMPLETED: {bad}")
        note = "; ".join(filter(None, [note, victim, f"task attempts {[t.get('attempts') for t in tasks]}"]))
        problems += ctrl_c(stack)
        return Trial("ray-worker", "mid-job", killed_at, result, problems, time.monotonic() - began, note)
    finally:
        stack.stop()


# --- the broker -----------------------------------------------------------------------------------

class Broker:
    """A Tansu broker of our own (memory storage), so a trial can pause, stop and start it on the
    same port without touching the session's broker."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "tansu.log"
        self.port = free_port()
        self.broker: Any = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        from infra.bus.broker import start_embedded_broker

        self.broker = start_embedded_broker(self.port, timeout_s=30, log_path=self.log)
        return self

    def pause(self) -> None:
        os.killpg(self.broker.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.broker.process.pid, signal.SIGCONT)

    def crash(self) -> None:
        """`kill -9` of the broker: what it held in memory is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.broker.process.pid, signal.SIGKILL)
        self.broker.process.wait(timeout=10)

    def stop(self) -> None:
        if self.broker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.broker.process.pid, signal.SIGCONT)
            self.broker.stop()

    def topics(self) -> list[str]:
        """The topics the broker has now (a diagnostic for reports)."""
        import asyncio

        from aiokafka import AIOKafkaClient

        async def ask() -> list[str]:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await client.bootstrap()
                metadata = await client.fetch_all_metadata()
                return sorted(metadata.topics())
            finally:
                await client.close()

        try:
            return asyncio.run(ask())
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            return [f"<{type(exc).__name__}: {exc}>"]


def kafka_env(broker: Broker) -> dict[str, str]:
    return {"SLUICE_KAFKA_BOOTSTRAP": broker.bootstrap, "SLUICE_KAFKA_SESSION_TIMEOUT_MS": "3000"}


def announced(stack: Sluice, upto: int) -> list[str]:
    """Keys the drop folder took (stored and published) in the first `upto` lines of the log."""
    keys = []
    with stack._lock:
        lines = stack.lines[:upto]
    for line in lines:
        if '"drop.taken"' in line:
            with contextlib.suppress(ValueError, KeyError):
                keys.append(json.loads(line)["key"])
    return keys


def broker_trial(seed_: Seed, workdir: Path, items: dict[str, str], clean: Census, *, mode: str, rng: random.Random,
                 outage_s: float = 6.0, jitter: float = 0.3, crash: bool = True, recover_s: float = 45.0) -> Trial:
    """(d) the Kafka bus on a Tansu broker of its own. The objects are dropped; as the drop folder
    takes the first one (publishing to the broker) plus up to `jitter` seconds, the broker is
    - `pause`d: SIGSTOP for `outage_s`, then SIGCONT — unreachable, its data kept. The counts must
      equal the clean run's;
    - `restart`ed: killed (`crash`; else stopped with SIGTERM), and started again on the same port
      `outage_s` / 2 later; the rest of the objects are dropped `outage_s` / 2 after that. Tansu runs
      with memory storage, so the new broker has none of the old one's topics, messages or
      committed offsets: an event published to the old broker and not yet consumed is gone. What
      must hold: every object lost was announced (taken from the drop folder) before the restart;
      objects dropped after the broker is back are all ingested (within `recover_s`); nothing is
      duplicated or stuck.
    In both cases `sluice up` must still stop on Ctrl-C."""
    began = time.monotonic()
    broker = Broker(workdir).start()
    data_dir = seed_.fork(workdir / "data")
    stack = Sluice(data_dir, free_port(), env=kafka_env(broker))
    try:
        stack.start()
        first = dict(list(items.items())[: len(items) // 2])
        second = dict(list(items.items())[len(items) // 2:])
        delay = rng.uniform(0, jitter)
        stack.mark(f"broker {mode}: {delay:.2f}s after the first drop.taken")
        hit = threading.Event()
        stack.on_line('"drop.taken"', hit.set)
        armed = time.monotonic()
        drop(stack.data_dir, first if mode == "restart" else items)
        hit.wait(60)
        time.sleep(delay)
        at = time.monotonic() - armed
        cut = len(stack.lines)
        if mode == "pause":
            stack.mark(f"broker paused at {at:.2f}s")
            broker.pause()
            time.sleep(outage_s)
            broker.resume()
            stack.mark("broker resumed")
            result = wait_quiescent(stack, seed_.collection_id, expected=sorted(items), timeout=150)
            problems = compare(clean, result)
            note = f"broker paused {outage_s:g}s"
        elif mode == "restart":
            stack.mark(f"broker {'killed' if crash else 'stopped (SIGTERM)'} at {at:.2f}s")
            if crash:
                broker.crash()
            else:
                broker.broker.stop()
            before = set(announced(stack, cut))
            time.sleep(outage_s / 2)
            broker.start()
            stack.mark("broker started again (empty: memory storage)")
            time.sleep(outage_s / 2)
            drop(stack.data_dir, second)
            result = wait_quiescent(stack, seed_.collection_id, expected=sorted(second), timeout=recover_s,
                                    settled=lambda c: not c.stuck, allow_lost=True)
            time.sleep(5)  # anything of the first half still on its way
            result = census(stack, seed_.collection_id, expected=sorted(items))
            lost = {entry.split(" ", 1)[0] for entry in result.lost}
            problems = []
            if lost - before:
                problems.append(f"lost objects that were not announced before the restart: {sorted(lost - before)}")
            if result.duplicates:
                problems.append(f"{len(result.duplicates)} duplicated: {result.duplicates[:5]}")
            if result.stuck:
                problems.append(f"{len(result.stuck)} stuck: {result.stuck[:6]}")
            note = (f"{len(before)} objects announced to the old broker, {len(lost & before)} of them lost; "
                    f"{len(lost - before)} of the {len(second)} dropped after the restart lost"
                    + (f": {sorted(lost - before)}" if lost - before else "") + f"; topics on the new broker: {broker.topics()}")
        else:
            raise ValueError(mode)
        problems += ctrl_c(stack)
        name = f"broker/{mode}" + ("" if mode == "pause" or crash else "-term")
        return Trial(name, "first drop.taken", at, result, problems, time.monotonic() - began, note)
    finally:
        stack.stop()
        broker.stop()


__all__ = [
    "Broker", "Census", "CatalogReader", "KILL_POINTS", "Seed", "Sluice", "Trial", "broker_trial", "census", "clean_run",
    "compare", "deploy_kill_trial", "drop", "free_port", "ingest_kill_trial", "push_kill_trial", "running", "seed",
    "slow_plugin", "stuck", "texts", "wait_quiescent", "worker_kill_trial",
]
