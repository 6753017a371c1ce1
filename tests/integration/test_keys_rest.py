"""API keys through the real REST app: roles per route, who may mint, list and revoke, revocation
and expiry on the very next request, and keyless requests refused before their body is read."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from functions.cli import main
from functions.records.tenancy import API_KEYS
from functions.rest.app import create_app
from tests.fixtures.rest_server import RestServer, clear_cli_env, point_cli_at
from tests.integration.test_models_rest import ADMIN, auth, running
from tests.integration.test_rest import assert_error

pytestmark = pytest.mark.integration
FIFTY_MB = 50 * 1024 * 1024
UPLOADS = "/v1/namespaces/acme/buckets/docs/uploads"  # a JSON body: without the middleware it is read before any check


@pytest.fixture
async def stack(tmp_path):
    async with running(tmp_path) as pair:
        yield pair


async def mint(client: httpx.AsyncClient, namespace: str, role: str = "write", key: str = ADMIN, **body) -> dict:
    r = await client.post(f"/v1/namespaces/{namespace}/api-keys", json={"role": role, **body}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()


async def request_upload(client: httpx.AsyncClient, namespace: str, key: str) -> httpx.Response:
    return await client.post(f"/v1/namespaces/{namespace}/buckets/docs/uploads",
                             json={"key": "a.txt", "content_type": "text/plain"}, headers=auth(key))


async def test_a_minted_key_answers_the_old_fields_and_its_role_label_and_expiry(stack):
    client, _ = stack
    issued = await mint(client, "acme", "read", name="ci", expires_in_days=7)
    assert {"api_key", "key_id", "namespace", "role", "label", "expires_at"} <= set(issued)
    assert issued["namespace"] == "acme" and issued["role"] == "read" and issued["label"] == "ci"
    expires = datetime.fromisoformat(issued["expires_at"])
    assert timedelta(days=6, hours=23) < expires - datetime.now(UTC) <= timedelta(days=7)
    default = (await client.post("/v1/namespaces/acme/api-keys", headers=auth(ADMIN))).json()
    assert default["role"] == "write" and default["expires_at"] is None and default["label"] is None
    assert_error(await client.post("/v1/namespaces/acme/api-keys", json={"role": "owner"}, headers=auth(ADMIN)),
                 422, "invalid_input")


async def test_a_read_key_reads_and_searches_but_cannot_write(stack):
    client, _ = stack
    reader = (await mint(client, "acme", "read"))["api_key"]
    assert (await client.get("/v1/namespaces/acme/collections", headers=auth(reader))).status_code == 200
    err = assert_error(await request_upload(client, "acme", reader), 403, "forbidden")
    assert "'write'" in err["message"] and err["details"]["required_role"] == "write"
    # read-only POSTs are open to it: past the role check, the collection is simply missing
    search = await client.post("/v1/namespaces/acme/collections/col_missing/search", json={"query": "x"}, headers=auth(reader))
    assert_error(search, 404, "not_found")
    search = await client.post("/v1/namespaces/acme/retrievers/feature_search",
                               json={"collection_id": "col_missing", "query": {"text": "x"}}, headers=auth(reader))
    assert_error(search, 404, "not_found")


async def test_a_write_key_writes_but_cannot_mint_or_list_keys_or_touch_secrets(stack):
    client, _ = stack
    writer = await mint(client, "acme", "write")
    key = writer["api_key"]
    assert (await request_upload(client, "acme", key)).status_code == 201
    for method, path, body in [
        ("POST", "/v1/namespaces/acme/api-keys", {"role": "read"}),
        ("GET", "/v1/namespaces/acme/api-keys", None),
        ("DELETE", f"/v1/namespaces/acme/api-keys/{writer['key_id']}", None),
        ("PUT", "/v1/namespaces/acme/secrets/TOKEN", {"value": "s3cret"}),
        ("GET", "/v1/namespaces/acme/secrets", None),
        ("DELETE", "/v1/namespaces/acme/secrets/TOKEN", None),
    ]:
        err = assert_error(await client.request(method, path, json=body, headers=auth(key)), 403, "forbidden")
        assert "'admin'" in err["message"], (method, path)


async def test_a_namespace_admin_mints_lists_revokes_and_sets_secrets_and_a_listing_hides_every_secret(stack):
    client, platform = stack
    boss = (await mint(client, "acme", "admin", label="boss"))["api_key"]
    minted = [await mint(client, "acme", role, key=boss, label=role) for role in ("read", "write", "admin")]
    assert (await client.put("/v1/namespaces/acme/secrets/TOKEN", json={"value": "s3cret"}, headers=auth(boss))).status_code == 200
    r = await client.get("/v1/namespaces/acme/api-keys", headers=auth(boss))
    assert r.status_code == 200, r.text
    listed = r.json()["api_keys"]
    assert [(k["label"], k["role"]) for k in listed] == [("boss", "admin"), ("read", "read"), ("write", "write"), ("admin", "admin")]
    for view in listed:
        assert set(view) == {"key_id", "namespace", "label", "role", "created_at", "expires_at", "revoked", "revoked_at"}
    digests = [record["id"] for record in await platform.catalog.find(API_KEYS)]
    assert not any(m["api_key"] in r.text or m["api_key"].rsplit("_", 1)[1] in r.text for m in minted)
    assert not any(digest in r.text for digest in digests)
    r = await client.delete(f"/v1/namespaces/acme/api-keys/{minted[0]['key_id']}", headers=auth(boss))
    assert r.status_code == 200 and r.json()["revoked"] is True and r.json()["revoked_at"]


async def test_a_namespace_admin_cannot_touch_another_namespaces_keys(stack):
    client, _ = stack
    acme_admin = (await mint(client, "acme", "admin"))["api_key"]
    theirs = await mint(client, "globex", "write")
    assert_error(await client.post("/v1/namespaces/globex/api-keys", json={"role": "read"}, headers=auth(acme_admin)), 403, "forbidden")
    assert_error(await client.get("/v1/namespaces/globex/api-keys", headers=auth(acme_admin)), 403, "forbidden")
    assert_error(await client.delete(f"/v1/namespaces/globex/api-keys/{theirs['key_id']}", headers=auth(acme_admin)),
                 403, "forbidden")
    assert_error(await client.delete(f"/v1/namespaces/acme/api-keys/{theirs['key_id']}", headers=auth(acme_admin)),
                 404, "not_found")
    assert (await client.get("/v1/namespaces/globex", headers=auth(theirs["api_key"]))).status_code == 200
    listed = (await client.get("/v1/namespaces/globex/api-keys", headers=auth(ADMIN))).json()["api_keys"]
    assert [k["revoked"] for k in listed if k["key_id"] == theirs["key_id"]] == [False]


async def test_a_revoked_key_gets_401_on_the_very_next_request(stack):
    client, _ = stack
    victim = await mint(client, "acme", "write")
    assert (await client.get("/v1/namespaces/acme", headers=auth(victim["api_key"]))).status_code == 200
    assert (await client.delete(f"/v1/namespaces/acme/api-keys/{victim['key_id']}", headers=auth(ADMIN))).status_code == 200
    err = assert_error(await client.get("/v1/namespaces/acme", headers=auth(victim["api_key"])), 401, "unauthorized")
    assert "revoked" in err["message"]
    assert_error(await request_upload(client, "acme", victim["api_key"]), 401, "unauthorized")


async def test_an_expired_key_gets_401_saying_it_expired(stack):
    client, platform = stack
    issued = await mint(client, "acme", "write", expires_in_days=1)
    assert (await client.get("/v1/namespaces/acme", headers=auth(issued["api_key"]))).status_code == 200
    [record] = await platform.catalog.find(API_KEYS, {"key_id": issued["key_id"]})  # a day and a second later
    await platform.catalog.update(API_KEYS, record["id"], {"expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()})
    err = assert_error(await client.get("/v1/namespaces/acme", headers=auth(issued["api_key"])), 401, "unauthorized")
    assert "expired" in err["message"]


# --- authentication before the body ---------------------------------------------------------------

async def test_health_the_docs_and_the_openapi_schema_need_no_key_and_everything_else_under_v1_does(stack):
    client, _ = stack
    for path in ("/v1/health", "/v1/docs", "/v1/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    schema = (await client.get("/v1/openapi.json")).json()
    assert {"post", "get"} <= set(schema["paths"]["/v1/namespaces/{namespace}/api-keys"])
    assert "delete" in schema["paths"]["/v1/namespaces/{namespace}/api-keys/{key_id}"]
    for path in ("/v1/nope", "/v1/namespaces/acme/api-keys", "/v1/namespaces/acme/secrets"):
        assert_error(await client.get(path), 401, "unauthorized")


def upload_scope(key: str | None) -> dict:
    headers = [(b"host", b"sluice.test"), (b"content-type", b"application/json"),
               (b"content-length", str(FIFTY_MB).encode())]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": UPLOADS, "raw_path": UPLOADS.encode(), "root_path": "",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("sluice.test", 80)}


@pytest.mark.parametrize("key", [None, "sk_nope_not_a_key"])
async def test_a_keyless_50_mb_upload_is_answered_401_without_reading_a_byte_of_its_body(stack, key):
    _, platform = stack
    app = create_app(platform)
    chunks_read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"\0" * (1024 * 1024), "more_body": chunks_read < 50}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(upload_scope(key), receive, send)
    assert chunks_read == 0
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401
    assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["error"]["type"] == "unauthorized" and set(body["error"]) == {"type", "message", "details"}


async def test_the_middlewares_principal_is_reused_by_the_routes(stack):
    client, platform = stack
    key = (await mint(client, "acme", "read"))["api_key"]
    app = create_app(platform)
    calls = []
    authenticate = app.state.tenancy.authenticate

    async def counting(token):
        calls.append(token)
        return await authenticate(token)

    app.state.tenancy.authenticate = counting
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test") as fresh:
        assert (await fresh.get("/v1/namespaces/acme/collections", headers=auth(key))).status_code == 200
    assert calls == [key]


class BareServer(RestServer):
    run_functions = False


def test_a_real_server_answers_a_keyless_50_mb_post_after_its_headers_alone(tmp_path):
    with BareServer(tmp_path / "data", ADMIN) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {UPLOADS} HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {FIFTY_MB}\r\n\r\n".encode()
                     + b"\0" * 65536)  # 64 KiB of the 50 MB: the answer must not wait for the rest
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:200]
        assert json.loads(body)["error"]["type"] == "unauthorized"
        assert httpx.get(f"{server.url}/v1/health").status_code == 200


def test_key_create_list_and_revoke_through_the_cli(tmp_path, monkeypatch, capsys):
    clear_cli_env(monkeypatch)
    with BareServer(tmp_path / "data", ADMIN) as server:
        writer = server.create_namespace("acme")
        point_cli_at(monkeypatch, server.url, ADMIN)
        assert main(["key", "create", "acme", "--label", "ci", "--role", "read", "--expires-in-days", "3"]) == 0
        issued = json.loads(capsys.readouterr().out)
        assert issued["role"] == "read" and issued["label"] == "ci" and issued["expires_at"] and issued["api_key"]

        assert main(["key", "list", "acme"]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        assert header.split() == ["KEY_ID", "LABEL", "ROLE", "STATE", "CREATED", "EXPIRES"]
        assert [row.split()[:4] for row in rows] == [[rows[0].split()[0], "cli", "write", "active"],
                                                    [issued["key_id"], "ci", "read", "active"]]
        assert issued["api_key"] not in "\n".join(rows)

        assert main(["key", "revoke", "acme", issued["key_id"]]) == 0
        assert capsys.readouterr().out.startswith(f"revoked {issued['key_id']} (ci) in namespace acme")
        assert main(["key", "list", "acme", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["api_keys"]
        assert [k["revoked"] for k in listed if k["key_id"] == issued["key_id"]] == [True]

        point_cli_at(monkeypatch, server.url, writer)
        assert main(["key", "list", "acme"]) == 1
        assert "403 forbidden" in capsys.readouterr().err
