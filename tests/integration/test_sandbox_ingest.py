"""A hostile plugin through the real path — push (scanner, dry run in a plugin host), ingest on a
real local Ray — next to another tenant's ingest: every attack is blocked, the findings name the
plugin's file and line, the other tenant's work completes, and nothing of it is read."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
from pathlib import Path

import httpx
import pytest

from functions.rest.app import create_app
from infra.bootstrap import bootstrap
from infra.settings import Settings
from tests.fixtures.functions import running_functions
from tests.fixtures.plugins import PLUGINS, zip_folder
from tests.integration.test_ingest import Stack
from tests.integration.test_plugins_rest import ADMIN, auth, hash_plugin, push

pytestmark = [pytest.mark.integration, pytest.mark.ray]

ATTACKER = PLUGINS / "hostile" / "attacker"


@contextlib.asynccontextmanager
async def running_stack(tmp_path: Path, **settings: object):
    """The embedded platform on a real local Ray, REST in-process, namespaces acme and globex."""
    config = Settings(data_dir=tmp_path / "data", bus="memory", compute="ray", admin_key=ADMIN, ingest_max_delay_s=0.5,
                      sandbox_cache_dir=tmp_path / "sandbox", **settings)
    async with bootstrap(config) as platform, running_functions(platform) as scheduler:
        transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=180) as client:
            for ns in ("acme", "globex"):
                r = await client.post("/v1/namespaces", json={"namespace_name": ns}, headers=auth(ADMIN))
                assert r.status_code == 201, r.text
            stack = Stack(platform, client, scheduler)
            collecting = asyncio.create_task(stack.collect())
            try:
                yield stack
            finally:
                collecting.cancel()


@pytest.fixture
async def stack(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("SLUICE_ADMIN_KEY", ADMIN)  # in the platform's environment: hosts must not see it
    async with running_stack(tmp_path) as stack:
        yield stack


async def _collection(stack: Stack, namespace: str, name: str, bucket: str, plugin: str, parameters: dict) -> dict:
    body = {"collection_name": name, "source": {"bucket": bucket, "prefix": ""},
            "feature_extractor": {"feature_extractor_name": plugin, "parameters": parameters}}
    r = await stack.client.post(f"/v1/namespaces/{namespace}/collections", json=body, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return r.json()


async def _put(stack: Stack, namespace: str, bucket: str, key: str, body: bytes) -> None:
    r = await stack.client.post(f"/v1/namespaces/{namespace}/buckets/{bucket}/uploads",
                                json={"key": key, "content_type": "text/plain"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    ticket = r.json()
    put = await stack.client.put(ticket["presigned_url"], content=body, headers=ticket["upload_headers"])
    assert put.status_code in (200, 204), put.text
    r = await stack.client.post(f"/v1/namespaces/{namespace}/buckets/{bucket}/uploads/{ticket['upload_id']}/confirm",
                                headers=auth(ADMIN))
    assert r.status_code in (200, 201), r.text


async def test_a_hostile_plugin_is_contained_and_the_other_tenant_is_untouched(stack, tmp_path):
    data_dir = tmp_path / "data"
    # the victim: globex, with its own plugin, bucket and a secret object
    r = await push(stack.client, "globex", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    victim = await _collection(stack, "globex", "vault", "globex-vault", "hash_embedder", {})
    await _put(stack, "globex", "globex-vault", "secret.csv", b"secret,value\nGLOBEX-CROWN-JEWELS,1\n")
    done = await stack.finished(victim["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 1, done.payload

    # the attacker: acme; its plugin passes the scanner (documented APIs only) and the dry run
    r = await push(stack.client, "acme", zip_folder(ATTACKER, top="attacker"), "attacker", version="1.0.0")
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["validation_status"] == "PASSED", outcome
    warnings = [w for w in outcome.get("warnings", []) if w["rule_id"] == "SLU880"]
    assert warnings and all(w["file"] == "processors/attack.py" and w["line"] > 0 for w in warnings), outcome

    objects = data_dir / "objects"
    targets = {
        "read": {"catalog": str(data_dir / "catalog.sqlite3"), "bus": str(data_dir / "bus.sqlite3"),
                 "master key": str(data_dir / "secrets.key"), "shadow": "/etc/shadow",
                 "victim object file": str(objects / "globex-vault" / "secret.csv")},
        "assets": {"victim s3": "s3://globex-vault/secret.csv",
                   "victim file url": (objects / "globex-vault" / "secret.csv").as_uri(),
                   "data dir": (data_dir / "catalog.sqlite3").as_uri(), "etc": "file:///etc/passwd"},
        "write": {"data dir": str(data_dir / "pwned.csv"), "shared tmp": "/tmp/sluice-pwned.csv",
                  "victim bucket": str(objects / "globex-vault" / "pwned.csv")},
    }
    attack = await _collection(stack, "acme", "loot", "acme-loot", "attacker", {"targets": targets})
    ours = await _collection(stack, "globex", "vault-2", "globex-vault-2", "hash_embedder", {})
    for i in range(3):
        await _put(stack, "acme", "acme-loot", f"bait-{i}.txt", f"bait number {i}".encode())
        await _put(stack, "globex", "globex-vault-2", f"note-{i}.txt", f"globex note {i}".encode())

    attacked = await stack.finished(attack["collection_id"])
    assert attacked.type == "IngestCompleted", attacked.payload
    other = await stack.finished(ours["collection_id"])
    assert other.type == "IngestCompleted" and other.payload.documents_written == 3, other.payload  # the other tenant goes on

    docs = await stack.platform.catalog.find("documents", {"collection_id": attack["collection_id"]})
    assert len(docs) == 3
    outcomes = json.loads(docs[0]["fields"]["attack"])
    assert outcomes[0] == "environment: []", outcomes  # no SLUICE_*, cloud or Ray variables in a host
    leaked = [o for o in outcomes if o.startswith("LEAKED") and not o.startswith("LEAKED scratch write")]
    assert leaked == [], leaked
    assert any(o.startswith("LEAKED scratch write") for o in outcomes), outcomes  # its own scratch folder works
    assert "GLOBEX-CROWN-JEWELS" not in json.dumps([d["fields"] for d in docs])
    assert not (data_dir / "pwned.csv").exists() and not Path("/tmp/sluice-pwned.csv").exists()
    assert not (objects / "globex-vault" / "pwned.csv").exists()

    task = (await stack.client.get(f"/v1/namespaces/acme/tasks/{attacked.payload.task_id}", headers=auth(ADMIN))).json()
    violations = [f for f in task["failures"] if f["step"] == "sandbox"]
    assert violations and all("processors/attack.py:" in v["error"] for v in violations), task["failures"]
    assert {"open", "write", "attribute"} <= {v["error"].split()[1] for v in violations}, violations


HOSTILE_REALTIME = '''import json
import os

import pandas as pd

from shared.plugins import open_asset
from shared.plugins.inference.serve import BaseInferenceService

TARGETS = json.loads(%r)


def attempt(name, action):
    try:
        value = action()
    except Exception as exc:  # noqa: BLE001
        return f"blocked {name}: {type(exc).__name__}: {exc}"
    return f"LEAKED {name}: {str(value)[:300]}"


def read_asset(url):
    with open_asset(url) as path:
        return pd.read_csv(path, header=None)


class InferenceService(BaseInferenceService):
    async def run_inference(self, inputs, parameters):
        outcomes = [attempt(f"read {n}", lambda p=p: pd.read_csv(p, header=None)) for n, p in sorted(TARGETS["read"].items())]
        outcomes += [attempt(f"asset {n}", lambda u=u: read_asset(u)) for n, u in sorted(TARGETS["assets"].items())]
        outcomes.append("environment: [" + ",".join(sorted(k for k in os.environ if k.startswith(("SLUICE_A", "AWS_", "RAY_")))) + "]")
        return {"hash_embedding": [1.0] + [0.0] * 31, "attack": outcomes}
'''


async def test_a_hostile_realtime_service_on_serve_is_contained(stack, tmp_path):
    from tests.integration.test_realtime import HASH_REALTIME, deploy

    data_dir = tmp_path / "data"
    r = await push(stack.client, "globex", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    victim = await _collection(stack, "globex", "vault", "globex-vault", "hash_embedder", {})
    await _put(stack, "globex", "globex-vault", "secret.csv", b"secret,value\nGLOBEX-CROWN-JEWELS,1\n")
    assert (await stack.finished(victim["collection_id"])).type == "IngestCompleted"
    targets = {"read": {"catalog": str(data_dir / "catalog.sqlite3"), "master key": str(data_dir / "secrets.key"),
                        "victim object": str(data_dir / "objects" / "globex-vault" / "secret.csv")},
               "assets": {"victim s3": "s3://globex-vault/secret.csv"}}
    archive = zip_folder(HASH_REALTIME, top="hash_realtime", edits={"realtime.py": HOSTILE_REALTIME % json.dumps(targets)})
    r = await push(stack.client, "acme", archive, "hash_realtime", version="1.0.0")
    assert r.status_code == 200, r.text
    plugin_id = r.json()["plugin_id"]
    status = await deploy(stack.client, plugin_id)
    assert status["status"] == "DEPLOYED", status
    r = await stack.client.post(f"/v1/namespaces/acme/plugins/{plugin_id}/realtime",
                                json={"inputs": {"text": "hello"}, "parameters": {}}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    outcomes = r.json()["outputs"]["attack"]
    assert [o for o in outcomes if o.startswith("LEAKED")] == [], outcomes
    assert "environment: []" in outcomes and "GLOBEX-CROWN-JEWELS" not in json.dumps(outcomes)
    assert sum(o.startswith("blocked") for o in outcomes) == 4, outcomes


API_EMBEDDER = '''import json
import urllib.request

import pandas as pd

API = "http://api.test:%(port)d"


def attempt(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return "LEAKED " + response.read().decode()[:100]
    except Exception as exc:  # noqa: BLE001
        return f"blocked {url}: {type(exc).__name__}: {exc}"


class HashEmbedder:
    """Embeds through a declared API; also tries the API's own address and a private one."""

    def __init__(self, config, **kwargs):
        self.dim = config["dim"]

    def embed(self, text):
        request = urllib.request.Request(API + "/embed", data=json.dumps({"text": text}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["vector"]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch["hash_embedding"] = [self.embed(t) for t in batch["data"].fillna("")]
        batch["attack"] = [json.dumps([attempt("http://127.0.0.1:%(port)d/embed"), attempt("http://10.0.0.1/")])] * len(batch)
        return batch
'''


class _EmbeddingApi(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:  # noqa: N802
        _EmbeddingApi.calls += 1
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        vector = [0.0] * 32
        vector[len(text) % 32] = 1.0
        body = json.dumps({"vector": vector}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
async def api_stack(tmp_path, ray_cluster):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with running_stack(tmp_path, egress_pinned_hosts={"api.test": "127.0.0.1"}) as stack:
            yield stack, server.server_address[1]
    finally:
        server.shutdown()


async def test_an_api_plugin_reaches_exactly_its_declared_host_during_ingest(api_stack):
    stack, port = api_stack
    manifest = (PLUGINS / "fixtures" / "hash_embedder" / "manifest.py").read_text() + f'\nnetwork = {{"allow": ["api.test:{port}"]}}\n'
    archive = hash_plugin(**{"manifest.py": manifest, "processors/hashing.py": API_EMBEDDER % {"port": port}})
    r = await push(stack.client, "acme", archive, "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    detail = (await stack.client.get(f"/v1/namespaces/acme/plugins/{r.json()['plugin_id']}", headers=auth(ADMIN))).json()
    assert detail["network_allow"] == [f"api.test:{port}"]  # the version keeps what manifest.py declares
    calls_after_dry_run = _EmbeddingApi.calls
    assert calls_after_dry_run >= 1  # the dry run reached the declared API

    collection = await _collection(stack, "acme", "api", "api-bucket", "hash_embedder", {})
    for i in range(3):
        await _put(stack, "acme", "api-bucket", f"t{i}.txt", ("x" * (i + 1)).encode())
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 3, done.payload
    assert _EmbeddingApi.calls >= calls_after_dry_run + 3
    docs = await stack.platform.catalog.find("documents", {"collection_id": collection["collection_id"]})
    for outcome in json.loads(docs[0]["fields"]["attack"]):
        assert outcome.startswith("blocked") and "not allowed at processors/hashing.py:" in outcome, outcome
