"""The REST adapter over the embedded stack: auth, namespaces, keys, health, error shape."""

from __future__ import annotations

import httpx
import pytest

from functions.rest.app import create_app
from infra.bootstrap import bootstrap
from infra.settings import Settings

pytestmark = pytest.mark.integration
ADMIN = "sk_admin_test_key-0123456789abcde"


@pytest.fixture
async def app(tmp_path):
    settings = Settings(data_dir=tmp_path, bus="memory", compute="none", admin_key=ADMIN)
    async with bootstrap(settings) as platform:
        yield create_app(platform)


@pytest.fixture
async def client(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test") as client:
        yield client


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def new_namespace(client, name: str) -> str:
    r = await client.post("/v1/namespaces", json={"namespace_name": name}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return name


async def new_key(client, namespace: str) -> str:
    r = await client.post(f"/v1/namespaces/{namespace}/api-keys", json={"name": "ci"}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    assert r.json()["namespace"] == namespace
    return r.json()["api_key"]


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    assert body["error"]["type"] == error_type
    assert "Traceback" not in response.text
    return body["error"]


async def test_health_says_only_up_or_down_without_the_admin_key(client):
    for headers in ({}, auth("sk_not_a_key")):
        r = await client.get("/v1/health", headers=headers)
        assert r.status_code == 200 and r.json() == {"status": "degraded"}  # compute=none; nothing names a store


async def test_health_reports_every_port_to_the_admin(client):
    r = await client.get("/v1/health", headers=auth(ADMIN))
    assert r.status_code == 200
    body = r.json()
    assert set(body["ports"]) == {"catalog", "object_store", "vectors", "bus", "compute", "outbox"}
    assert body["ports"]["catalog"]["status"] == "ok" and body["ports"]["catalog"]["adapter"] == "sqlite"
    assert body["ports"]["compute"]["status"] == "degraded"  # compute=none
    assert body["status"] == "degraded"


async def test_a_request_without_a_key_gets_401(client):
    err = assert_error(await client.get("/v1/namespaces"), 401, "unauthorized")
    assert "Authorization: Bearer" in err["message"]


async def test_a_request_with_an_unknown_key_gets_401(client):
    assert_error(await client.get("/v1/namespaces", headers=auth("sk_nope")), 401, "unauthorized")


async def test_admin_creates_namespaces_and_names_must_be_valid_and_unique(client):
    await new_namespace(client, "acme")
    assert_error(await client.post("/v1/namespaces", json={"namespace_name": "acme"}, headers=auth(ADMIN)), 409, "already_exists")
    err = assert_error(await client.post("/v1/namespaces", json={"namespace_name": "A b"}, headers=auth(ADMIN)), 422, "invalid_input")
    assert err["details"]["field"] == "namespace_name"
    err = assert_error(await client.post("/v1/namespaces", json={}, headers=auth(ADMIN)), 422, "invalid_input")
    assert "namespace_name" in err["message"]


async def test_a_namespace_key_sees_only_its_namespace_and_gets_403_elsewhere(client):
    await new_namespace(client, "acme")
    await new_namespace(client, "globex")
    key = await new_key(client, "acme")

    r = await client.get("/v1/namespaces", headers=auth(key))
    assert [n["namespace_name"] for n in r.json()["namespaces"]] == ["acme"]
    r = await client.get("/v1/namespaces", headers=auth(ADMIN))
    assert [n["namespace_name"] for n in r.json()["namespaces"]] == ["acme", "globex"]

    assert (await client.get("/v1/namespaces/acme", headers=auth(key))).status_code == 200
    err = assert_error(await client.get("/v1/namespaces/globex", headers=auth(key)), 403, "forbidden")
    assert "globex" in err["message"]
    assert_error(await client.post("/v1/namespaces/globex/api-keys", headers=auth(key)), 403, "forbidden")
    assert_error(await client.post("/v1/namespaces", json={"namespace_name": "mine"}, headers=auth(key)), 403, "forbidden")


async def test_a_namespace_admin_key_may_issue_further_keys_for_its_namespace_and_a_write_key_may_not(client):
    await new_namespace(client, "acme")
    key = await new_key(client, "acme")
    assert_error(await client.post("/v1/namespaces/acme/api-keys", headers=auth(key)), 403, "forbidden")
    r = await client.post("/v1/namespaces/acme/api-keys", json={"role": "admin"}, headers=auth(ADMIN))
    r = await client.post("/v1/namespaces/acme/api-keys", headers=auth(r.json()["api_key"]))
    assert r.status_code == 201
    assert (await client.get("/v1/namespaces/acme", headers=auth(r.json()["api_key"]))).status_code == 200


async def test_keys_for_a_missing_namespace_are_not_found(client):
    assert_error(await client.post("/v1/namespaces/ghost/api-keys", headers=auth(ADMIN)), 404, "not_found")


async def test_unknown_routes_and_crashes_answer_json_without_a_trace(app, client):
    assert_error(await client.get("/v1/nope", headers=auth(ADMIN)), 404, "not_found")

    @app.get("/v1/boom")
    async def boom():
        raise RuntimeError("secret internals")

    err = assert_error(await client.get("/v1/boom", headers=auth(ADMIN)), 500, "internal_error")
    assert "secret" not in err["message"]


async def test_health_shows_the_sandbox_layers_to_the_admin_only(client):
    anonymous = (await client.get("/v1/health")).json()
    assert anonymous.get("sandbox") is None
    admin = (await client.get("/v1/health", headers=auth(ADMIN))).json()
    sandbox = admin["sandbox"]
    assert sandbox["mode"] == {"available": True, "detail": "on"}
    for layer in ("landlock", "seccomp", "network", "privileges", "rlimits"):
        assert sandbox[layer]["available"] is True, sandbox
    wrong = (await client.get("/v1/health", headers=auth("sk_not_a_key"))).json()
    assert wrong.get("sandbox") is None
