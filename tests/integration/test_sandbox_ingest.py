"""A hostile plugin through the real path — push (scanner, dry run in a plugin host), ingest on a
real local Ray — next to another tenant's ingest: every attack is blocked, the findings name the
plugin's file and line, the other tenant's work completes, and nothing of it is read."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from tests.fixtures.plugins import PLUGINS, zip_folder
from tests.integration.test_ingest import running_stack
from tests.integration.test_plugins_rest import ADMIN, auth, hash_plugin, push

pytestmark = [pytest.mark.integration, pytest.mark.ray]

ATTACKER = PLUGINS / "hostile" / "attacker"


@pytest.fixture
async def stack(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("SLUICE_ADMIN_KEY", ADMIN)  # in the platform's environment: hosts must not see it
    async with running_stack(tmp_path / "data", ("acme", "globex"), ingest_max_delay_s=0.5,
                             sandbox_cache_dir=tmp_path / "sandbox") as stack:
        yield stack


async def _victim(stack) -> None:
    """globex, with its own plugin, bucket and a secret object, ingested."""
    r = await push(stack.client, "globex", hash_plugin(), "hash_embedder", version="1.0.0")
    assert r.status_code == 200, r.text
    victim = await stack.collection("vault", "globex-vault", "hash_embedder", namespace="globex")
    await stack.put("globex-vault", "secret.csv", b"secret,value\nGLOBEX-CROWN-JEWELS,1\n", namespace="globex")
    done = await stack.finished(victim["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 1, done.payload


async def test_a_hostile_plugin_is_contained_and_the_other_tenant_is_untouched(stack, tmp_path):
    data_dir = tmp_path / "data"
    # the victim: globex, with its own plugin, bucket and a secret object
    await _victim(stack)

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
    attack = await stack.collection("loot", "acme-loot", "attacker", namespace="acme", parameters={"targets": targets})
    ours = await stack.collection("vault-2", "globex-vault-2", "hash_embedder", namespace="globex")
    for i in range(3):
        await stack.put("acme-loot", f"bait-{i}.txt", f"bait number {i}".encode(), namespace="acme")
        await stack.put("globex-vault-2", f"note-{i}.txt", f"globex note {i}".encode(), namespace="globex")

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


async def test_a_hostile_realtime_service_on_serve_is_contained(stack, tmp_path):
    from tests.integration.test_realtime import deploy

    data_dir = tmp_path / "data"
    await _victim(stack)
    targets = {"read": {"catalog": str(data_dir / "catalog.sqlite3"), "master key": str(data_dir / "secrets.key"),
                        "victim object": str(data_dir / "objects" / "globex-vault" / "secret.csv")},
               "assets": {"victim s3": "s3://globex-vault/secret.csv"}}
    r = await push(stack.client, "acme", zip_folder(ATTACKER, top="attacker"), "attacker", version="1.0.0")
    assert r.status_code == 200, r.text
    plugin_id = r.json()["plugin_id"]
    status = await deploy(stack.client, plugin_id)
    assert status["status"] == "DEPLOYED" and status["mode"] == "realtime", status
    r = await stack.client.post(f"/v1/namespaces/acme/plugins/{plugin_id}/realtime",
                                json={"inputs": {"text": "hello"}, "parameters": {"targets": targets}}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    outcomes = r.json()["outputs"]["attack"]
    assert outcomes[0] == "environment: []", outcomes  # only SLUICE_SERVING, which the platform sets on purpose
    assert [o for o in outcomes if o.startswith("LEAKED") and not o.startswith("LEAKED scratch write")] == [], outcomes
    assert "GLOBEX-CROWN-JEWELS" not in json.dumps(outcomes)
    assert sum(o.startswith(("blocked read", "blocked asset", "blocked patch")) for o in outcomes) == 6, outcomes


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

    def do_POST(self) -> None:
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
        async with running_stack(tmp_path / "data", ingest_max_delay_s=0.5, sandbox_cache_dir=tmp_path / "sandbox",
                                 egress_pinned_hosts={"api.test": "127.0.0.1"}) as stack:
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

    collection = await stack.collection("api", "api-bucket", "hash_embedder", namespace="acme")
    for i in range(3):
        await stack.put("api-bucket", f"t{i}.txt", ("x" * (i + 1)).encode(), namespace="acme")
    done = await stack.finished(collection["collection_id"])
    assert done.type == "IngestCompleted" and done.payload.documents_written == 3, done.payload
    assert _EmbeddingApi.calls >= calls_after_dry_run + 3
    docs = await stack.platform.catalog.find("documents", {"collection_id": collection["collection_id"]})
    for outcome in json.loads(docs[0]["fields"]["attack"]):
        assert outcome.startswith("blocked") and "not allowed at processors/hashing.py:" in outcome, outcome
