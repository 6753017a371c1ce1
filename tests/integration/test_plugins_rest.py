"""Plugins through REST over the embedded stack, with the scan and register functions running:
upload → presigned PUT → confirm → outcome; versions, source, rollback, diff, delete; isolation."""

from __future__ import annotations

import httpx
import pytest

from engine.plugins.archive import write_zip
from functions.rest.app import create_app
from functions.runtime.run import functions_running
from infra.bootstrap import bootstrap
from infra.settings import Settings
from tests.fixtures.plugins import HASH_EMBEDDER, SEED_MY_EXTRACTOR, zip_folder

pytestmark = pytest.mark.integration
ADMIN = "sk_admin_plugins_test-0123456789a"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def client(tmp_path):
    settings = Settings(data_dir=tmp_path, bus="memory", compute="none", admin_key=ADMIN)
    async with bootstrap(settings) as platform:
        async with functions_running(platform, reconcile=False):
            transport = httpx.ASGITransport(app=create_app(platform), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=120) as client:
                for ns in ("acme", "globex"):
                    r = await client.post("/v1/namespaces", json={"namespace_name": ns}, headers=auth(ADMIN))
                    assert r.status_code == 201, r.text
                yield client


async def key_for(client, namespace: str) -> str:
    r = await client.post(f"/v1/namespaces/{namespace}/api-keys", json={}, headers=auth(ADMIN))
    return r.json()["api_key"]


async def push(client, namespace: str, archive: bytes, name: str, *, version: str | None = None,
               key: str = ADMIN, wait: float = 120, message: str | None = None) -> httpx.Response:
    body = {"name": name, **({"version": version} if version else {}), **({"description": message} if message else {})}
    r = await client.post(f"/v1/namespaces/{namespace}/plugins/uploads", json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    ticket = r.json()
    put = await client.put(ticket["presigned_url"], content=archive, headers=ticket["upload_headers"])
    assert put.status_code in (200, 204), put.text
    return await client.post(
        f"/v1/namespaces/{namespace}/plugins/uploads/{ticket['upload_id']}/confirm", params={"wait": wait}, headers=auth(key)
    )


def hash_plugin(**edits: str | None) -> bytes:
    return zip_folder(HASH_EMBEDDER, top="hash_embedder", edits=edits)


@pytest.mark.torch
async def test_the_seed_docs_text_example_uploads_scans_and_registers(client):
    r = await push(client, "acme", zip_folder(SEED_MY_EXTRACTOR, top="my_extractor"), "my_extractor", version="1.0.0")
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["validation_status"] == "PASSED" and outcome["validation_errors"] == []
    assert outcome["feature_uris"] == ["sluice://my_extractor@1.0.0/my_embedding"]
    assert outcome["deployment_status"] == "NOT_DEPLOYED"
    detail = (await client.get(f"/v1/namespaces/acme/plugins/{outcome['plugin_id']}", headers=auth(ADMIN))).json()
    assert detail["active"] and detail["has_realtime"]
    [dry_run] = detail["dry_runs"]
    assert dry_run["rows_in"] == 2 and "my_embedding" in dry_run["columns"]


async def test_a_manifest_with_the_intuitive_feature_keys_is_refused_at_confirm_naming_each_key(client):
    manifest = (HASH_EMBEDDER / "manifest.py").read_text().replace(
        '{"feature_type": "embedding", "feature_name": "hash_embedding", "embedding_dim": 32, "distance_metric": "cosine"}',
        '{"type": "vector", "name": "hash_embedding", "dimensions": 32, "distance": "cosine"}',
    )
    r = await push(client, "acme", hash_plugin(**{"manifest.py": manifest}), "hash_embedder")
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["validation_status"] == "FAILED" and outcome["plugin_id"] is None
    messages = " | ".join(e["message"] for e in outcome["validation_errors"] if e["rule_id"] == "SLU811")
    for wrong, right in (
        ("type", "feature_type"),
        ("name", "feature_name"),
        ("dimensions", "embedding_dim"),
        ("distance", "distance_metric"),
    ):
        assert f"unknown key {wrong!r}; use {right!r}" in messages
    assert all(e["file"] == "manifest.py" and e["hint"] for e in outcome["validation_errors"])
    assert (await client.get("/v1/namespaces/acme/plugins", headers=auth(ADMIN))).json()["plugins"] == []


async def test_a_scanner_violation_is_refused_with_rule_file_line_and_hint(client):
    hashing = (HASH_EMBEDDER / "processors" / "hashing.py").read_text()
    r = await push(client, "acme", hash_plugin(**{"processors/hashing.py": "import subprocess\n" + hashing}), "hash_embedder")
    assert r.status_code == 422, r.text
    [error] = [e for e in r.json()["validation_errors"] if "subprocess" in e["message"]]
    assert error["file"] == "processors/hashing.py" and error["line"] == 1 and error["rule_id"].startswith("SLU1")


async def test_a_zip_slip_archive_is_refused_by_name_at_confirm(client):
    archive = write_zip([
        ("manifest.py", b"x = 1\n"), ("pipeline.py", b"x = 1\n"), ("../../evil.py", b"print('escaped')\n"),
    ])
    r = await push(client, "acme", archive, "hash_embedder")
    assert r.status_code == 422, r.text
    assert any("../../evil.py" in e["message"] or e["file"] == "../../evil.py" for e in r.json()["validation_errors"])


async def test_a_failing_step_is_reported_with_the_plugin_file_and_line(client):
    hashing = (HASH_EMBEDDER / "processors" / "hashing.py").read_text().replace(
        '        batch["hash_embedding"]', '        raise ValueError("boom")\n        batch["hash_embedding"]'
    )
    r = await push(client, "acme", hash_plugin(**{"processors/hashing.py": hashing}), "hash_embedder")
    assert r.status_code == 422, r.text
    [error] = [e for e in r.json()["validation_errors"] if e["rule_id"] == "SLU840"]
    assert error["file"] == "processors/hashing.py" and "boom" in error["message"] and error["line"] > 0


async def test_a_vector_of_the_wrong_dimension_fails_the_dry_run(client):
    r = await push(client, "acme", hash_plugin(**{"manifest.py": (HASH_EMBEDDER / "manifest.py").read_text().replace(
        '"embedding_dim": 32', '"embedding_dim": 64')}), "hash_embedder")
    assert r.status_code == 422, r.text
    [error] = [e for e in r.json()["validation_errors"] if e["rule_id"] == "SLU842"]
    assert "32 dimensions, manifest declares 64" in error["message"]


async def test_versions_history_rollback_diff_source_and_delete(client):
    first = await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0", message="first")
    assert first.status_code == 200, first.text
    changed = (HASH_EMBEDDER / "processors" / "hashing.py").read_text().replace("text.lower()", "text.casefold()")
    second = await push(client, "acme", hash_plugin(**{"processors/hashing.py": changed}), "hash_embedder", message="casefold")
    assert second.status_code == 200, second.text
    assert second.json()["version"] == "1.0.1"  # omitted version: next patch

    versions = (await client.get("/v1/namespaces/acme/plugins/by-name/hash_embedder/versions", headers=auth(ADMIN))).json()
    assert versions["active_version"] == "1.0.1"
    assert [(v["version"], v["message"], v["active"]) for v in versions["versions"]] == [
        ("1.0.1", "casefold", True),
        ("1.0.0", "first", False),
    ]

    diff = (
        await client.get(
            "/v1/namespaces/acme/plugins/by-name/hash_embedder/diff", params={"v1": "1.0.0", "v2": "1.0.1"}, headers=auth(ADMIN)
        )
    ).json()
    [changed_file] = diff["files"]
    assert changed_file["path"] == "processors/hashing.py" and "-" in changed_file["diff"] and "+" in changed_file["diff"]
    assert "casefold" in changed_file["diff"]

    r = await client.post("/v1/namespaces/acme/plugins/by-name/hash_embedder/rollback", json={"version": "1.0.0"}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["active_version"] == "1.0.0" and r.json()["previous_version"] == "1.0.1"

    source = await client.get(f"/v1/namespaces/acme/plugins/{first.json()['plugin_id']}/source", headers=auth(ADMIN))
    assert source.status_code == 200 and source.headers["content-type"] == "application/zip"
    assert source.content == hash_plugin()

    r = await client.delete(f"/v1/namespaces/acme/plugins/{first.json()['plugin_id']}", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["active_version"] == "1.0.1"
    listed = (await client.get("/v1/namespaces/acme/plugins", headers=auth(ADMIN))).json()["plugins"]
    assert [(p["version"], p["active"]) for p in listed] == [("1.0.1", True)]


async def test_a_registered_version_cannot_be_uploaded_again(client):
    assert (await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0")).status_code == 200
    r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "hash_embedder", "version": "1.0.0"}, headers=auth(ADMIN))
    assert r.status_code == 409 and "already registered" in r.json()["error"]["message"]


async def test_bad_names_versions_and_a_confirm_before_the_put_are_clear_errors(client):
    r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "9lives"}, headers=auth(ADMIN))
    assert r.status_code == 422 and "invalid plugin name" in r.json()["error"]["message"]
    r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "good_name", "version": "1.0"}, headers=auth(ADMIN))
    assert r.status_code == 422 and "X.Y.Z" in r.json()["error"]["message"]
    ticket = (await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "good_name"}, headers=auth(ADMIN))).json()
    r = await client.post(f"/v1/namespaces/acme/plugins/uploads/{ticket['upload_id']}/confirm", headers=auth(ADMIN))
    assert r.status_code == 409 and "PUT the zip" in r.json()["error"]["message"]


async def test_a_confirm_that_outlasts_its_wait_answers_202_with_a_status_url(client):
    r = await push(client, "acme", hash_plugin(), "hash_embedder", wait=0)
    assert r.status_code == 202, r.text
    status_url = r.json()["status_url"]
    assert status_url.endswith(f"/v1/namespaces/acme/plugins/uploads/{r.json()['upload_id']}")
    for _ in range(600):
        outcome = (await client.get(status_url, headers=auth(ADMIN))).json()
        if outcome["status"] in ("REGISTERED", "FAILED"):
            break
        import asyncio

        await asyncio.sleep(0.1)
    assert outcome["status"] == "REGISTERED", outcome


async def test_a_namespace_sees_only_its_own_plugins_archives_and_versions(client):
    acme, globex = await key_for(client, "acme"), await key_for(client, "globex")
    r = await push(client, "acme", hash_plugin(), "hash_embedder", version="1.0.0", key=acme)
    assert r.status_code == 200, r.text
    plugin_id = r.json()["plugin_id"]
    # globex's key cannot reach into acme's path at all
    assert (await client.get("/v1/namespaces/acme/plugins", headers=auth(globex))).status_code == 403
    # and acme's plugin id does not exist from globex's namespace
    for method, path in (("GET", f"/{plugin_id}"), ("GET", f"/{plugin_id}/source"), ("DELETE", f"/{plugin_id}"),
                         ("GET", "/by-name/hash_embedder/versions")):
        r = await client.request(method, f"/v1/namespaces/globex/plugins{path}", headers=auth(globex))
        assert r.status_code == 404, (method, path, r.text)
    assert (await client.get("/v1/namespaces/globex/plugins", headers=auth(globex))).json()["plugins"] == []
    # the same name and version register independently in globex
    r = await push(client, "globex", hash_plugin(), "hash_embedder", version="1.0.0", key=globex)
    assert r.status_code == 200 and r.json()["plugin_id"] != plugin_id


async def test_a_processor_that_swallows_its_error_and_writes_zeros_is_caught_by_the_dry_run(client):
    # the hosted guide's image example does exactly this: `except Exception: embeddings.append([0.0] * 512)`
    hashing = (HASH_EMBEDDER / "processors" / "hashing.py").read_text().replace(
        '        batch["hash_embedding"] = [self.embed(t) for t in batch["data"].fillna("")]',
        '        try:\n            raise RuntimeError("model missing")\n        except Exception:\n'
        '            batch["hash_embedding"] = [[0.0] * self.dim for _ in range(len(batch))]',
    )
    r = await push(client, "acme", hash_plugin(**{"processors/hashing.py": hashing}), "hash_embedder")
    assert r.status_code == 422, r.text
    assert [e["rule_id"] for e in r.json()["validation_errors"]] == ["SLU846"]
