"""Cross-tenant isolation over every REST route, through the real app on the embedded stack.

Namespace B (`globex`) gets one of each kind of resource, each carrying marker strings: plugins
(two versions, a pending upload, a deployment record), models (registered, aliased, pending),
a collection over a bucket with a planted document, vector point and task, object uploads
(confirmed and pending), a secret, an API key. Then a key of namespace A (`acme`, role `admin`
so that no role check hides the tenancy check) drives every route of the app:

- form B: A's key with B's namespace in the path answers 403;
- form A: A's key with A's own namespace in the path and B's resource id (or name) answers 404,
  or, for a route that creates something named by the caller, makes A's own resource;

and in every answer (body and headers, errors included) no marker of B appears, apart from those
A itself sent in that request (an error naming the id the caller asked for is an echo, not a
leak). Each refusal must also read the same as for an id that does not exist at all (no
existence oracle). `test_every_route_is_covered` fails when the app has a route this table does
not drive, so a new route cannot slip in untested; the routes that name no tenant are listed in
`NO_TENANT` and driven too.
"""

from __future__ import annotations

import contextlib
import json
import secrets as token
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from functions.records.collection import COLLECTIONS, DOCUMENTS
from functions.records.deployments import DEPLOYMENTS, deployment_record
from functions.records.plugins import VERSIONS
from functions.records.secret_store import SecretsStore
from functions.records.tasks import TASKS
from functions.rest.app import create_app
from functions.runtime.run import functions_running
from infra.bootstrap import Platform, bootstrap
from infra.settings import Settings
from infra.vectors.base import Point, point_id
from tests.fixtures.archives import tar_gz
from tests.fixtures.plugins import HASH_EMBEDDER
from tests.integration.test_models_rest import ADMIN, auth
from tests.integration.test_plugins_rest import hash_plugin, push
from tests.integration.test_tenant_boundaries import upload as upload_object

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

A, B = "acme", "globex"
NS = "/v1/namespaces/{namespace}"

# B's names and contents: every one a marker that must never reach A.
B_PLUGIN, B_PENDING_PLUGIN = "globex_quartz_plugin", "globex_quartz_pending"
B_V1, B_V2 = "17.31.8", "17.31.9"
B_PLUGIN_DESC = "globex plugin notes: quartz rollout"
B_MODEL, B_MODEL_VERSION, B_PENDING_MODEL, B_ALIAS = "globex-quartz-model", "4.2.7", "globex-quartz-pending", "quartzprod"
B_COLLECTION, B_BUCKET = "globex_quartz_coll", "globex-quartz-vault"
B_KEY, B_PENDING_KEY = "quartz/private-report.txt", "quartz/pending-report.txt"
B_OBJECT_BODY = b"globex object body: the quartz merger closes on friday"
B_SECRET_NAME, B_SECRET_VALUE = "GLOBEX_QUARTZ_TOKEN", "globex-secret-value-7f3a9c"
B_DOC_TEXT = "globex document text: zebra quartz pricing"
B_TASK_ERROR = "globex task failure: quartz ledger unreadable"
B_DEPLOY_ERROR = "globex deploy error: quartz replica"
B_KEY_LABEL = "globex-quartz-key-label"
DIM = 32  # the hash embedder's vector size


def safetensors_archive(fill: float) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return tar_gz({"model.safetensors": save({"weight": np.full((3, 2), fill, dtype=np.float32)})})


def b_plugin(name: str, version: str, **edits: str) -> bytes:
    """The hash embedder renamed (the manifest must name the plugin as it is uploaded)."""
    manifest = (HASH_EMBEDDER / "manifest.py").read_text().replace(
        '"feature_extractor_name": "hash_embedder", "version": "1.0.0"', f'"feature_extractor_name": "{name}", "version": "{version}"')
    return hash_plugin(**{"manifest.py": manifest, **edits})


# --- the world: B's resources, A's key --------------------------------------------------------

@dataclass
class World:
    client: httpx.AsyncClient
    platform: Platform
    app: FastAPI
    a_key: str
    b_key: str
    b: dict[str, str]  # B's ids, names and presigned paths, by label
    markers: dict[str, str]  # label -> a string of B's that must never reach A
    sealed_secret: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


async def mint(client: httpx.AsyncClient, namespace: str, role: str = "admin", label: str | None = None) -> dict:
    r = await client.post(f"/v1/namespaces/{namespace}/api-keys", json={"role": role, "label": label}, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    return r.json()


async def ticket(client: httpx.AsyncClient, url: str, body: dict, key: str) -> dict:
    r = await client.post(url, json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()


async def put(client: httpx.AsyncClient, issued: dict, content: bytes) -> None:
    r = await client.put(issued["presigned_url"], content=content, headers=issued["upload_headers"])
    assert r.status_code in (200, 204), r.text


async def plant(client: httpx.AsyncClient, platform: Platform, app: FastAPI) -> World:
    """B's resources, each kind once; A's admin key."""
    b: dict[str, str] = {}
    bkey = await mint(client, B, "admin", B_KEY_LABEL)
    b_key = bkey["api_key"]
    b["key_id"] = bkey["key_id"]
    akey = await mint(client, A, "admin", "acme-attacker")

    # plugins: two registered versions, one upload waiting for its confirm (archive already PUT)
    first = await push(client, B, b_plugin(B_PLUGIN, B_V1), B_PLUGIN, version=B_V1, key=b_key, message=B_PLUGIN_DESC)
    assert first.status_code == 200, first.text
    changed = (HASH_EMBEDDER / "processors" / "hashing.py").read_text().replace("text.lower()", "text.casefold()")
    second = await push(client, B, b_plugin(B_PLUGIN, B_V2, **{"processors/hashing.py": changed}), B_PLUGIN, version=B_V2, key=b_key)
    assert second.status_code == 200, second.text
    b["plugin_id_v1"], b["upload_id_v1"] = first.json()["plugin_id"], first.json()["upload_id"]
    b["plugin_id"], b["upload_id"] = second.json()["plugin_id"], second.json()["upload_id"]
    pending = await ticket(client, f"/v1/namespaces/{B}/plugins/uploads", {"name": B_PENDING_PLUGIN, "version": "1.0.0"}, b_key)
    await put(client, pending, b_plugin(B_PENDING_PLUGIN, "1.0.0"))
    b["pending_upload_id"] = pending["upload_id"]
    b["pending_plugin_path"] = urlsplit(pending["presigned_url"]).path
    version = await platform.catalog.get(VERSIONS, b["plugin_id"])
    b["plugin_sha256"] = version["sha256"]
    b["plugin_archive_key"] = version["archive"]["key"]
    await platform.catalog.upsert(DEPLOYMENTS, b["plugin_id"], deployment_record(
        version, "FAILED", desired="undeployed", error=B_DEPLOY_ERROR))

    # models: one registered (with an alias), one waiting for its confirm (archive already PUT)
    issued = await ticket(client, f"/v1/namespaces/{B}/models/uploads",
                          {"name": B_MODEL, "version": B_MODEL_VERSION, "model_format": "safetensors"}, b_key)
    await put(client, issued, safetensors_archive(0.25))
    r = await client.post(issued["confirm_url"], headers=auth(b_key))
    assert r.status_code == 200 and r.json()["status"] == "REGISTERED", r.text
    b["model_id"], b["model_sha256"] = r.json()["model_id"], r.json()["sha256"]
    r = await client.put(f"/v1/namespaces/{B}/models/{b['model_id']}/aliases/{B_ALIAS}", headers=auth(b_key))
    assert r.status_code == 200, r.text
    issued = await ticket(client, f"/v1/namespaces/{B}/models/uploads",
                          {"name": B_PENDING_MODEL, "version": "1.0.0", "model_format": "safetensors"}, b_key)
    await put(client, issued, safetensors_archive(0.5))
    b["pending_model_id"] = issued["model_id"]
    b["pending_model_path"] = urlsplit(issued["presigned_url"]).path

    # objects: one confirmed, one PUT but not confirmed
    confirmed = await upload_object(client, B, B_BUCKET, B_KEY, B_OBJECT_BODY, b_key)
    b["object_upload_id"] = confirmed["upload_id"]
    issued = await ticket(client, f"/v1/namespaces/{B}/buckets/{B_BUCKET}/uploads",
                          {"key": B_PENDING_KEY, "content_type": "text/plain"}, b_key)
    await put(client, issued, B_OBJECT_BODY)
    b["pending_object_upload_id"] = issued["upload_id"]
    b["object_path"] = urlsplit(issued["presigned_url"]).path.replace(B_PENDING_KEY, B_KEY)
    b["object_physical"] = f"{B}/{B_BUCKET}/"

    # a collection over the bucket, built by B's plugin; a document, its vector point and a task planted
    r = await client.post(f"/v1/namespaces/{B}/collections", headers=auth(b_key), json={
        "collection_name": B_COLLECTION, "source": {"bucket": B_BUCKET, "prefix": ""},
        "feature_extractor": {"feature_extractor_name": B_PLUGIN}})
    assert r.status_code == 201, r.text
    b["collection_id"] = collection_id = r.json()["collection_id"]
    b["backfill_id"] = r.json()["backfill"]["backfill_id"]
    record = await platform.catalog.get(COLLECTIONS, collection_id)
    b["document_id"] = document_id = "doc_" + token.token_hex(10)
    b["object_id"] = object_id = "obj_" + token.token_hex(10)
    pid = point_id(collection_id, document_id)
    source = {"bucket": B_BUCKET, "key": B_KEY, "version": "v1", "etag": None, "version_id": None,
              "size": len(B_OBJECT_BODY), "content_type": "text/plain"}
    await platform.catalog.upsert(DOCUMENTS, document_id, {
        "document_id": document_id, "plugin_document_id": document_id, "namespace": B, "collection_id": collection_id,
        "object_id": object_id, "point_id": pid, "source": source, "text": B_DOC_TEXT, "data": None,
        "feature_uris": [f"sluice://{B_PLUGIN}@{B_V2}/hash_embedding"], "fields": {"title": "globex quartz title"},
        "lineage": {"task_id": "", "plugin_id": b["plugin_id"], "plugin_name": B_PLUGIN, "plugin_version": B_V2,
                    "parent_document_id": document_id},
        "written_at": "2024-01-01T00:00:00+00:00",
    })
    await platform.vectors.upsert(record["index_name"], [Point(id=pid, vectors={"hash_embedding": [1.0] + [0.0] * (DIM - 1)},
                                                               payload={"document_id": document_id, "object_id": object_id,
                                                                        "collection_id": collection_id, "bucket": B_BUCKET,
                                                                        "key": B_KEY, "version": "v1", "text": B_DOC_TEXT})])
    b["task_id"] = task_id = "tsk_" + token.token_hex(10)
    await platform.catalog.insert(TASKS, task_id, {
        "task_id": task_id, "namespace": B, "collection_id": collection_id, "status": "COMPLETED", "objects": 1,
        "correlation_id": None, "owner": None, "created_at": "2024-01-01T00:00:00+00:00", "started_at": None,
        "finished_at": None, "documents_written": 1, "vectors_upserted": {"hash_embedding": 1}, "rows_failed": 1,
        "rows_skipped": 0, "failures": [{"object_id": object_id, "step": "embed", "error": B_TASK_ERROR}],
        "warnings": [], "reason": None, "rows_done": 1, "rows_total": 1,
    })

    # a secret
    r = await client.put(f"/v1/namespaces/{B}/secrets/{B_SECRET_NAME}", json={"value": B_SECRET_VALUE}, headers=auth(b_key))
    assert r.status_code == 200, r.text
    sealed = (await SecretsStore.from_settings(platform.catalog, platform.settings).sealed(B))[B_SECRET_NAME]

    markers = {
        "plugin name": B_PLUGIN, "pending plugin name": B_PENDING_PLUGIN, "plugin description": B_PLUGIN_DESC,
        "plugin version 1": B_V1, "plugin version 2": B_V2, "model name": B_MODEL, "pending model name": B_PENDING_MODEL,
        "model alias": B_ALIAS, "collection name": B_COLLECTION, "bucket": B_BUCKET, "object key": B_KEY,
        "pending object key": B_PENDING_KEY, "object body": B_OBJECT_BODY.decode(), "secret name": B_SECRET_NAME,
        "secret value": B_SECRET_VALUE, "sealed secret": sealed, "document text": B_DOC_TEXT, "task error": B_TASK_ERROR,
        "deploy error": B_DEPLOY_ERROR, "key label": B_KEY_LABEL, "api key": b_key,
        **{k: v for k, v in b.items() if not k.endswith("_path")},
    }
    return World(client=client, platform=platform, app=app, a_key=akey["api_key"], b_key=b_key, b=b, markers=markers,
                 sealed_secret=sealed)


@contextlib.asynccontextmanager
async def stack(tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, Platform, FastAPI]]:
    """tests/integration/test_models_rest.py's `running`, keeping the app (its routes are enumerated)."""
    settings = Settings(data_dir=tmp_path / "data", bus="memory", compute="none", admin_key=ADMIN)
    async with bootstrap(settings) as platform:
        async with functions_running(platform, reconcile=False):
            app = create_app(platform)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test", timeout=120) as client:
                for ns in (A, B):
                    r = await client.post("/v1/namespaces", json={"namespace_name": ns}, headers=auth(ADMIN))
                    assert r.status_code == 201, r.text
                yield client, platform, app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory) -> AsyncIterator[World]:
    async with stack(tmp_path_factory.mktemp("cross_tenant")) as (client, platform, app):
        yield await plant(client, platform, app)


# --- checking one answer ----------------------------------------------------------------------

def leaked(w: World, r: httpx.Response, sent: str) -> list[str]:
    """Labels of B's markers in the answer's body or headers, but for those the request itself carried."""
    seen = r.content.decode("utf-8", "replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    seen_unquoted = unquote(seen)
    return [label for label, value in w.markers.items()
            if value and value not in sent and (value in seen or value in seen_unquoted)]


def decoy(value: str) -> str:
    """A same-shaped value that names nothing: each hex digit moved one on, in its case (other characters stay)."""
    def moved(c: str) -> str:
        if c.lower() not in "0123456789abcdef":
            return c
        step = f"{(int(c, 16) + 1) % 16:x}"
        return step.upper() if c.isupper() else step

    return "".join(moved(c) for c in value)


def substitute(obj: Any, swaps: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in swaps:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, dict):
        return {substitute(k, swaps): substitute(v, swaps) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(substitute(v, swaps) for v in obj)
    return obj


def described(r: httpx.Response) -> str:
    return f"{r.request.method} {unquote(str(r.request.url))} -> {r.status_code} {r.text[:1500]}"


# --- the route table --------------------------------------------------------------------------

Send = Callable[[World], Awaitable[tuple[httpx.Response, str]]]


@dataclass(frozen=True)
class Case:
    """One way a route is driven with A's key. `ns` is the namespace in the path (A or B, or None
    for a route without one); `path` fills the template's other parameters from B's ids (a label
    of `World.b`) or literally (a value starting with '=')."""

    method: str
    route: str
    ns: str | None
    expect: tuple[int, ...]
    note: str = ""
    path: dict[str, str] = field(default_factory=dict)
    body: Callable[[World], dict[str, Any]] | None = None  # httpx keyword arguments: json, params, data, files
    check: Callable[[World, httpx.Response], Awaitable[None]] | None = None
    send: Send | None = None  # a request the table cannot describe (presigned URLs)
    oracle: bool = True  # a refusal must read the same as for an id that does not exist
    echoes: tuple[str, ...] = ()  # labels of B's values the request names in another form (name@version: the model id)

    @property
    def id(self) -> str:
        form = {A: "A-path", B: "B-path", None: "no-ns"}[self.ns]
        return f"{form} {self.method} {self.route}" + (f" [{self.note}]" if self.note else "")


def value_of(w: World, spec: str) -> str:
    return spec[1:] if spec.startswith("=") else w.b[spec]


def request_of(case: Case, w: World) -> tuple[str, dict[str, Any]]:
    params = {name: value_of(w, spec) for name, spec in case.path.items()}
    if case.ns is not None:
        params["namespace"] = case.ns
    url = case.route.format(**params)
    return url, dict(case.body(w)) if case.body else {}


def j(**body: Any) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"json": body}


def search_body(w: World) -> dict[str, Any]:
    return {"json": {"collection_id": w.b["collection_id"], "query": {"vector": [1.0] + [0.0] * (DIM - 1)}, "limit": 5}}


def multipart_body(name: str, version: str) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"files": {"file": ("model.tar.gz", safetensors_archive(0.75), "application/gzip")},
                      "data": {"name": name, "version": version, "model_format": "safetensors"}}


# checks on what A's own requests made or saw

async def only_acme_listed(w: World, r: httpx.Response) -> None:
    assert [n["namespace_name"] for n in r.json()["namespaces"]] == [A], r.text
    assert B not in r.text


async def b_secret_untouched(w: World, r: httpx.Response) -> None:
    sealed = await SecretsStore.from_settings(w.platform.catalog, w.platform.settings).sealed(B)
    assert sealed.get(B_SECRET_NAME) == w.sealed_secret, "B's secret changed"


async def minted_key_stays_in_acme(w: World, r: httpx.Response) -> None:
    minted = r.json()
    assert minted["namespace"] == A
    got = await w.client.get(f"/v1/namespaces/{B}/plugins", headers=auth(minted["api_key"]))
    assert got.status_code == 403, got.text


async def b_key_still_works(w: World, r: httpx.Response) -> None:
    got = await w.client.get(f"/v1/namespaces/{B}/plugins", headers=auth(w.b_key))
    assert got.status_code == 200, got.text


async def fresh_plugin_version(w: World, r: httpx.Response) -> None:
    assert r.json()["version"] == "1.0.0", f"A's first upload of the name was numbered after B's versions: {r.text}"


def listed_empty(field_name: str) -> Callable[[World, httpx.Response], Awaitable[None]]:
    async def check(w: World, r: httpx.Response) -> None:
        assert r.json()[field_name] == [], r.text

    return check


def listed_only_acme(field_name: str) -> Callable[[World, httpx.Response], Awaitable[None]]:
    async def check(w: World, r: httpx.Response) -> None:
        assert {item["namespace"] for item in r.json()[field_name]} <= {A}, r.text

    return check


async def acme_collection_holds_nothing_of_b(w: World, r: httpx.Response) -> None:
    made = r.json()
    assert made["collection_id"] != w.b["collection_id"]
    got = await w.client.get(f"/v1/namespaces/{A}/collections/{made['collection_id']}", headers=auth(w.a_key))
    assert got.status_code == 200 and got.json()["document_count"] == 0, got.text
    dim = made["vector_indexes"][0]["dimensions"]
    found = await w.client.post(f"/v1/namespaces/{A}/retrievers/feature_search", headers=auth(w.a_key), json={
        "collection_id": made["collection_id"], "query": {"vector": [1.0] + [0.0] * (dim - 1)}, "limit": 5})
    assert found.status_code == 200 and found.json()["results"] == [], found.text
    assert not leaked(w, found, B_COLLECTION), described(found)


async def acme_object_is_acmes(w: World, r: httpx.Response) -> None:
    issued = r.json()
    path = urlsplit(issued["presigned_url"]).path
    assert f"/{B}/" not in path and f"/{A}/{B_BUCKET}/" in path, path
    await put(w.client, issued, b"acme's own bytes")
    confirmed = await w.client.post(issued["confirm_url"], headers=auth(w.a_key))
    assert confirmed.status_code == 200, confirmed.text
    assert not leaked(w, confirmed, f"{B_BUCKET} {B_KEY} {issued['upload_id']}"), described(confirmed)
    assert await w.platform.objects(B).get_bytes(B_BUCKET, B_KEY) == B_OBJECT_BODY
    assert await w.platform.objects(A).get_bytes(B_BUCKET, B_KEY) == b"acme's own bytes"


async def acme_model_is_acmes(w: World, r: httpx.Response) -> None:
    assert r.json()["namespace"] == A and r.json()["model_id"] != w.b["model_id"], r.text


# presigned URLs: A's own, with the path edited to B's folder

async def edited_put(w: World, issued_url: str, body: dict, b_path_label: str) -> tuple[httpx.Response, str]:
    issued = await ticket(w.client, issued_url, body, w.a_key)
    parts = urlsplit(issued["presigned_url"])
    edited = urlunsplit(parts._replace(path=w.b[b_path_label]))
    r = await w.client.put(edited, content=b"PK trojan from acme", headers=issued["upload_headers"])
    w.notes.setdefault("own_urls", []).append((issued, parts.path))
    return r, edited


async def put_into_b_object_folder(w: World) -> tuple[httpx.Response, str]:
    return await edited_put(w, f"/v1/namespaces/{A}/buckets/docs/uploads", {"key": B_KEY, "content_type": "text/plain"},
                            "object_path")


async def put_into_b_plugin_upload(w: World) -> tuple[httpx.Response, str]:
    return await edited_put(w, f"/v1/namespaces/{A}/plugins/uploads", {"name": "acme_probe_plugin", "version": "1.0.0"},
                            "pending_plugin_path")


async def put_into_b_model_upload(w: World) -> tuple[httpx.Response, str]:
    return await edited_put(w, f"/v1/namespaces/{A}/models/uploads",
                            {"name": "acme-probe-model", "version": "1.0.0", "model_format": "safetensors"}, "pending_model_path")


async def get_b_object_with_a_signature(w: World) -> tuple[httpx.Response, str]:
    issued = await ticket(w.client, f"/v1/namespaces/{A}/buckets/docs/uploads", {"key": "probe-get.txt"}, w.a_key)
    parts = urlsplit(issued["presigned_url"])
    edited = urlunsplit(parts._replace(path=w.b["object_path"]))
    r = await w.client.get(edited)
    bare = await w.client.get(w.b["object_path"], headers=auth(w.a_key))
    assert bare.status_code == 403 and not leaked(w, bare, w.b["object_path"]), described(bare)
    return r, edited


async def b_objects_untouched(w: World, r: httpx.Response) -> None:
    assert await w.platform.objects(B).get_bytes(B_BUCKET, B_KEY) == B_OBJECT_BODY
    plugin_key = w.b["pending_plugin_path"].split("/", 4)[4]
    assert await w.platform.store.get_bytes(w.platform.settings.plugins_bucket, plugin_key) == b_plugin(B_PENDING_PLUGIN, "1.0.0")
    # the same URLs unedited still work: the refusal was for the edited path, not a broken signature
    for issued, _ in w.notes.pop("own_urls", []):
        ok = await w.client.put(issued["presigned_url"], content=b"acme's own", headers=issued["upload_headers"])
        assert ok.status_code in (200, 204), ok.text


OBJECT = NS + "/buckets/{bucket}/objects/{key:path}"


async def delete_object(w: World, namespace: str, bucket: str, key: str) -> tuple[httpx.Response, str]:
    """`DELETE .../objects/{key:path}` (a path template `str.format` cannot fill)."""
    url = f"/v1/namespaces/{namespace}/buckets/{bucket}/objects/{key}"
    return await w.client.delete(url, headers=auth(w.a_key)), url


async def delete_b_object_under_b(w: World) -> tuple[httpx.Response, str]:
    return await delete_object(w, B, B_BUCKET, B_KEY)


async def delete_b_object_under_a(w: World) -> tuple[httpx.Response, str]:
    """A's namespace, B's bucket name and key: A's own (empty) folder answers 404, and reads the same
    for names that exist nowhere (no existence oracle)."""
    r, url = await delete_object(w, A, B_BUCKET, B_KEY)
    fake, _ = await delete_object(w, A, decoy(B_BUCKET), decoy(B_KEY))
    assert fake.status_code == r.status_code, described(fake)
    assert substitute(fake.text, [(decoy(B_BUCKET), B_BUCKET), (decoy(B_KEY), B_KEY)]) == r.text, described(fake)
    return r, url


async def b_object_still_there(w: World, r: httpx.Response) -> None:
    assert await w.platform.objects(B).get_bytes(B_BUCKET, B_KEY) == B_OBJECT_BODY


async def deploy_b_plugin_under_a(w: World) -> tuple[httpx.Response, str]:
    """With compute none the route refuses before any lookup; pretend compute runs jobs so the
    lookup is what answers."""
    url = f"/v1/namespaces/{A}/plugins/{w.b['plugin_id']}/deploy"
    w.platform.compute.runs_jobs = True
    try:
        r = await w.client.post(url, headers=auth(w.a_key))
    finally:
        del w.platform.compute.runs_jobs
    return r, url


P = NS + "/plugins"
M = NS + "/models"
C = NS + "/collections"
OBJ = "/v1/objects/{bucket}/{key:path}"
DLQ = "/v1/admin/dead-letters"  # every namespace's dead letters: the platform admin key only

# Routes that name no tenant: driven with A's key too, and checked for B's markers.
NO_TENANT = {
    ("GET", "/v1/health"), ("GET", "/v1/openapi.json"), ("GET", "/v1/docs"), ("GET", "/docs/oauth2-redirect"),
    ("POST", "/v1/namespaces"), ("GET", "/v1/namespaces"), ("PUT", OBJ), ("GET", OBJ),
    ("GET", DLQ), ("GET", DLQ + "/{dead_letter_id}"), ("POST", DLQ + "/{dead_letter_id}/replay"),
    ("POST", DLQ + "/{dead_letter_id}/discard"),
}

CASES: list[Case] = [
    # routes without a tenant in the path
    Case("GET", "/v1/health", None, (200, 503)),
    Case("GET", "/v1/openapi.json", None, (200,)),
    Case("GET", "/v1/docs", None, (200,)),
    Case("GET", "/docs/oauth2-redirect", None, (200,), "FastAPI's, outside /v1"),
    Case("POST", "/v1/namespaces", None, (403,), "only the admin key creates namespaces", body=j(namespace_name=B)),
    Case("GET", "/v1/namespaces", None, (200,), "A sees only its own", check=only_acme_listed),
    Case("PUT", OBJ, None, (403,), "A's URL edited to B's data folder", send=put_into_b_object_folder),
    Case("PUT", OBJ, None, (403,), "A's URL edited to B's pending plugin upload", send=put_into_b_plugin_upload),
    Case("PUT", OBJ, None, (403,), "A's URL edited to B's pending model upload", send=put_into_b_model_upload,
         check=b_objects_untouched),
    Case("GET", OBJ, None, (403,), "A's signature on B's object", send=get_b_object_with_a_signature),
    Case("GET", DLQ, None, (403,), "a namespace admin is not the platform admin"),
    Case("GET", DLQ, None, (403,), "filtered by B's namespace", body=lambda w: {"params": {"namespace": B}}),
    Case("GET", DLQ + "/{dead_letter_id}", None, (403,), path={"dead_letter_id": "=dlq_0123456789abcdef"}),
    Case("POST", DLQ + "/{dead_letter_id}/replay", None, (403,), path={"dead_letter_id": "=dlq_0123456789abcdef"}),
    Case("POST", DLQ + "/{dead_letter_id}/discard", None, (403,), path={"dead_letter_id": "=dlq_0123456789abcdef"}),

    # --- form B: B's namespace in the path, every route -> 403
    Case("GET", NS, B, (403,)),
    Case("PUT", NS + "/secrets/{name}", B, (403,), path={"name": "=" + B_SECRET_NAME}, body=j(value="acme overwrote"),
         check=b_secret_untouched),
    Case("GET", NS + "/secrets", B, (403,)),
    Case("POST", NS + "/api-keys", B, (403,), body=j(label="acme-in-globex", role="admin")),
    Case("GET", NS + "/api-keys", B, (403,)),
    Case("POST", P + "/uploads", B, (403,), body=j(name=B_PLUGIN)),
    Case("POST", P + "/uploads/{upload_id}/confirm", B, (403,), path={"upload_id": "pending_upload_id"}),
    Case("GET", P + "/uploads/{upload_id}", B, (403,), path={"upload_id": "pending_upload_id"}),
    Case("GET", P, B, (403,)),
    Case("GET", P + "/by-name/{name}/versions", B, (403,), path={"name": "=" + B_PLUGIN}),
    Case("GET", P + "/by-name/{name}/diff", B, (403,), path={"name": "=" + B_PLUGIN},
         body=lambda w: {"params": {"v1": B_V1, "v2": B_V2}}),
    Case("GET", P + "/{plugin_id}", B, (403,), path={"plugin_id": "plugin_id"}),
    Case("GET", P + "/{plugin_id}/source", B, (403,), path={"plugin_id": "plugin_id"}),
    Case("POST", P + "/{plugin_id}/deploy", B, (403,), path={"plugin_id": "plugin_id"}),
    Case("GET", P + "/{plugin_id}/status", B, (403,), path={"plugin_id": "plugin_id"}),
    Case("POST", P + "/{plugin_id}/realtime", B, (403,), path={"plugin_id": "plugin_id"}, body=j(inputs={"text": "quartz"})),
    Case("POST", M, B, (403,), body=multipart_body("acme-in-globex", "1.0.0")),
    Case("POST", M + "/uploads", B, (403,), body=j(name="acme-in-globex", version="1.0.0", model_format="safetensors")),
    Case("POST", M + "/uploads/{model_id}/confirm", B, (403,), path={"model_id": "pending_model_id"}),
    Case("GET", M, B, (403,)),
    Case("GET", M + "/{model_id}", B, (403,), path={"model_id": "model_id"}),
    Case("POST", M + "/{model_id}/deploy", B, (403,), path={"model_id": "model_id"}),
    Case("PUT", M + "/{model_id}/aliases/{alias}", B, (403,), path={"model_id": "model_id", "alias": "=acmealias"}),
    Case("POST", C, B, (403,), body=j(collection_name="acme_in_globex", source={"bucket": B_BUCKET, "prefix": ""},
                                      feature_extractor={"feature_extractor_name": B_PLUGIN})),
    Case("GET", C, B, (403,)),
    Case("GET", C + "/{collection_id}", B, (403,), path={"collection_id": "collection_id"}),
    Case("POST", C + "/{collection_id}/reingest", B, (403,), path={"collection_id": "collection_id"}),
    Case("GET", C + "/{collection_id}/backfills/{backfill_id}", B, (403,),
         path={"collection_id": "collection_id", "backfill_id": "backfill_id"}),
    Case("DELETE", OBJECT, B, (403,), send=delete_b_object_under_b, check=b_object_still_there),
    Case("POST", C + "/{collection_id}/search", B, (403,), path={"collection_id": "collection_id"}, body=j(query="quartz")),
    Case("POST", NS + "/buckets/{bucket}/uploads", B, (403,), path={"bucket": "=" + B_BUCKET},
         body=j(key=B_KEY, content_type="text/plain")),
    Case("POST", NS + "/buckets/{bucket}/uploads/{upload_id}/confirm", B, (403,),
         path={"bucket": "=" + B_BUCKET, "upload_id": "pending_object_upload_id"}),
    Case("GET", NS + "/tasks", B, (403,)),
    Case("GET", NS + "/tasks/{task_id}", B, (403,), path={"task_id": "task_id"}),
    Case("POST", NS + "/retrievers/feature_search", B, (403,), body=search_body),

    # --- form A: A's own namespace, B's ids and names -> 404; A's lists hold nothing of B's
    Case("GET", NS, A, (200,), "A's own namespace"),
    Case("GET", NS + "/secrets", A, (200,), "A's list", check=listed_empty("secrets")),
    Case("GET", NS + "/api-keys", A, (200,), "A's list"),
    Case("POST", P + "/uploads/{upload_id}/confirm", A, (404,), "B's pending upload", path={"upload_id": "pending_upload_id"}),
    Case("POST", P + "/uploads/{upload_id}/confirm", A, (404,), "B's registered upload", path={"upload_id": "upload_id"}),
    Case("GET", P + "/uploads/{upload_id}", A, (404,), "B's pending upload", path={"upload_id": "pending_upload_id"}),
    Case("GET", P + "/uploads/{upload_id}", A, (404,), "B's registered upload", path={"upload_id": "upload_id"}),
    Case("GET", P, A, (200,), "A's list", check=listed_empty("plugins")),
    Case("GET", P + "/by-name/{name}/versions", A, (404,), path={"name": "=" + B_PLUGIN}),
    Case("GET", P + "/by-name/{name}/diff", A, (404,), path={"name": "=" + B_PLUGIN},
         body=lambda w: {"params": {"v1": B_V1, "v2": B_V2}}),
    Case("GET", P + "/{plugin_id}", A, (404,), path={"plugin_id": "plugin_id"}),
    Case("GET", P + "/{plugin_id}", A, (404,), "B's plugin name as id", path={"plugin_id": "=" + B_PLUGIN}),
    Case("GET", P + "/{plugin_id}/source", A, (404,), path={"plugin_id": "plugin_id"}),
    Case("POST", P + "/{plugin_id}/deploy", A, (404,), "compute pretended on", send=deploy_b_plugin_under_a, oracle=False),
    Case("POST", P + "/{plugin_id}/deploy", A, (404, 409), "compute none", path={"plugin_id": "plugin_id"}),
    Case("GET", P + "/{plugin_id}/status", A, (404,), path={"plugin_id": "plugin_id"}),
    Case("POST", P + "/{plugin_id}/realtime", A, (404,), "B's plugin id", path={"plugin_id": "plugin_id"},
         body=j(inputs={"text": "quartz"})),
    Case("POST", P + "/{plugin_id}/realtime", A, (404,), "B's plugin name", path={"plugin_id": "=" + B_PLUGIN},
         body=j(inputs={"text": "quartz"})),
    Case("POST", M + "/uploads/{model_id}/confirm", A, (404,), "B's pending model", path={"model_id": "pending_model_id"}),
    Case("POST", M + "/uploads/{model_id}/confirm", A, (404,), "B's registered model", path={"model_id": "model_id"}),
    Case("GET", M, A, (200,), "A's list", check=listed_only_acme("models")),
    Case("GET", M + "/{model_id}", A, (404,), path={"model_id": "model_id"}),
    Case("GET", M + "/{model_id}", A, (404,), "name@alias", path={"model_id": f"={B_MODEL}@{B_ALIAS}"}),
    Case("GET", M + "/{model_id}", A, (404,), "name@version", path={"model_id": f"={B_MODEL}@{B_MODEL_VERSION}"},
         echoes=("model_id",)),
    Case("GET", M + "/{model_id}", A, (404,), "B's pending model", path={"model_id": "pending_model_id"}),
    Case("POST", M + "/{model_id}/deploy", A, (404,), path={"model_id": "model_id"}),
    Case("PUT", M + "/{model_id}/aliases/{alias}", A, (404,), path={"model_id": "model_id", "alias": "=acmealias"}),
    Case("PUT", M + "/{model_id}/aliases/{alias}", A, (404,), "name@alias", path={"model_id": f"={B_MODEL}@{B_ALIAS}",
                                                                                 "alias": "=acmealias"}),
    Case("GET", C, A, (200,), "A's list", check=listed_empty("collections")),
    Case("GET", C + "/{collection_id}", A, (404,), path={"collection_id": "collection_id"}),
    Case("POST", C + "/{collection_id}/search", A, (404,), path={"collection_id": "collection_id"}, body=j(query="quartz")),
    Case("POST", C + "/{collection_id}/reingest", A, (404,), path={"collection_id": "collection_id"}),
    Case("GET", C + "/{collection_id}/backfills/{backfill_id}", A, (404,),
         path={"collection_id": "collection_id", "backfill_id": "backfill_id"}),
    Case("DELETE", OBJECT, A, (404,), "A's own folder, B's bucket and key", send=delete_b_object_under_a, check=b_object_still_there),
    Case("POST", NS + "/buckets/{bucket}/uploads/{upload_id}/confirm", A, (404,), "B's pending upload, B's bucket name",
         path={"bucket": "=" + B_BUCKET, "upload_id": "pending_object_upload_id"}),
    Case("POST", NS + "/buckets/{bucket}/uploads/{upload_id}/confirm", A, (404,), "B's confirmed upload",
         path={"bucket": "=" + B_BUCKET, "upload_id": "object_upload_id"}),
    Case("POST", NS + "/buckets/{bucket}/uploads/{upload_id}/confirm", A, (404,), "B's pending upload, A's bucket",
         path={"bucket": "=docs", "upload_id": "pending_object_upload_id"}),
    Case("GET", NS + "/tasks", A, (200,), "A's list", check=listed_empty("tasks")),
    Case("GET", NS + "/tasks", A, (200,), "filtered by B's collection", check=listed_empty("tasks"),
         body=lambda w: {"params": {"collection_id": w.b["collection_id"]}}),
    Case("GET", NS + "/tasks/{task_id}", A, (404,), path={"task_id": "task_id"}),
    Case("POST", NS + "/retrievers/feature_search", A, (404,), "B's collection id (cached by B's search)", body=search_body),

    # --- form A, creating: A's own resource under B's names, B's untouched and unnamed
    Case("POST", NS + "/api-keys", A, (201,), "A's own key", body=j(label="acme-ci", role="read"), check=minted_key_stays_in_acme,
         oracle=False),
    Case("DELETE", NS + "/secrets/{name}", A, (404,), "B's secret name", path={"name": "=" + B_SECRET_NAME},
         check=b_secret_untouched),
    Case("PUT", NS + "/secrets/{name}", A, (200,), "A's own, B's name", path={"name": "=" + B_SECRET_NAME},
         body=j(value="acme's value"), check=b_secret_untouched, oracle=False),
    Case("POST", P + "/uploads", A, (201,), "A's own, B's name", body=j(name=B_PLUGIN), check=fresh_plugin_version, oracle=False),
    Case("POST", M, A, (201,), "A's own, B's name", body=multipart_body(B_MODEL, "9.9.8"), check=acme_model_is_acmes, oracle=False),
    Case("POST", M + "/uploads", A, (201,), "A's own, B's name",
         body=j(name=B_MODEL, version="9.9.9", model_format="safetensors"), oracle=False),
    Case("GET", M + "/{model_id}", A, (404,), "name@alias once A has the name", path={"model_id": f"={B_MODEL}@{B_ALIAS}"}),
    Case("POST", C, A, (404,), "on B's plugin", body=j(collection_name="acme_on_b_plugin", source={"bucket": B_BUCKET, "prefix": ""},
                                                     feature_extractor={"feature_extractor_name": B_PLUGIN})),
    Case("POST", C, A, (201,), "A's own, B's collection and bucket names", oracle=False, check=acme_collection_holds_nothing_of_b,
         body=j(collection_name=B_COLLECTION, source={"bucket": B_BUCKET, "prefix": ""},
                feature_extractor={"feature_extractor_name": "text_embedding"})),
    Case("POST", NS + "/buckets/{bucket}/uploads", A, (201,), "A's own folder, B's bucket and key", path={"bucket": "=" + B_BUCKET},
         body=j(key=B_KEY, content_type="text/plain"), check=acme_object_is_acmes, oracle=False),

    # --- destructive, both forms, last
    Case("DELETE", NS + "/api-keys/{key_id}", B, (403,), path={"key_id": "key_id"}, check=b_key_still_works),
    Case("DELETE", NS + "/api-keys/{key_id}", A, (404,), path={"key_id": "key_id"}, check=b_key_still_works),
    Case("DELETE", NS + "/secrets/{name}", B, (403,), path={"name": "=" + B_SECRET_NAME}, check=b_secret_untouched),
    Case("POST", P + "/by-name/{name}/rollback", B, (403,), path={"name": "=" + B_PLUGIN}, body=j(version=B_V1)),
    Case("POST", P + "/by-name/{name}/rollback", A, (404,), path={"name": "=" + B_PLUGIN}, body=j(version=B_V1)),
    Case("POST", P + "/{plugin_id}/undeploy", B, (403,), path={"plugin_id": "plugin_id"}),
    Case("POST", P + "/{plugin_id}/undeploy", A, (404,), path={"plugin_id": "plugin_id"}),
    Case("DELETE", P + "/{plugin_id}", B, (403,), path={"plugin_id": "plugin_id"}),
    Case("DELETE", P + "/{plugin_id}", A, (404,), path={"plugin_id": "plugin_id"}),
    Case("POST", M + "/{model_id}/undeploy", B, (403,), path={"model_id": "model_id"}),
    Case("POST", M + "/{model_id}/undeploy", A, (404,), path={"model_id": "model_id"}),
    Case("DELETE", M + "/{model_id}/aliases/{alias}", B, (403,), path={"model_id": "model_id", "alias": "=" + B_ALIAS}),
    Case("DELETE", M + "/{model_id}/aliases/{alias}", A, (404,), path={"model_id": "model_id", "alias": "=" + B_ALIAS}),
    Case("DELETE", M + "/{model_id}", B, (403,), path={"model_id": "model_id"}),
    Case("DELETE", M + "/{model_id}", A, (404,), path={"model_id": "model_id"}),
    Case("DELETE", M + "/{model_id}", A, (404,), "B's pending model", path={"model_id": "pending_model_id"}),
    Case("DELETE", C + "/{collection_id}", B, (403,), path={"collection_id": "collection_id"}),
    Case("DELETE", C + "/{collection_id}", A, (404,), path={"collection_id": "collection_id"}),
]


# --- the tests --------------------------------------------------------------------------------

async def test_b_sees_its_own_markers_so_the_probes_can_see_a_leak(world: World) -> None:
    """The control: through B's own key the routes do answer B's markers (and B's vector search
    puts B's collection into the retriever's cache before A asks for it)."""
    w, key = world, auth(world.b_key)
    probes = {
        f"/v1/namespaces/{B}/plugins/{w.b['plugin_id']}": ("plugin name", "plugin_sha256"),
        f"/v1/namespaces/{B}/plugins/by-name/{B_PLUGIN}/versions": ("plugin description", "plugin_id_v1"),
        f"/v1/namespaces/{B}/plugins/{w.b['plugin_id']}/status": ("deploy error",),
        f"/v1/namespaces/{B}/plugins/uploads/{w.b['pending_upload_id']}": ("pending plugin name",),
        f"/v1/namespaces/{B}/models/{B_MODEL}@{B_ALIAS}": ("model_id", "model_sha256"),
        f"/v1/namespaces/{B}/collections/{w.b['collection_id']}": ("collection name", "bucket"),
        f"/v1/namespaces/{B}/tasks/{w.b['task_id']}": ("task error",),
        f"/v1/namespaces/{B}/secrets": ("secret name",),
        f"/v1/namespaces/{B}/api-keys": ("key label", "key_id"),
    }
    for url, labels in probes.items():
        r = await w.client.get(url, headers=key)
        assert r.status_code == 200, described(r)
        found = leaked(w, r, url)
        assert set(labels) <= set(found), (url, labels, found)
    r = await w.client.post(f"/v1/namespaces/{B}/retrievers/feature_search", headers=key, **search_body(w))
    assert r.status_code == 200, described(r)
    assert r.json()["results"][0]["text"] == B_DOC_TEXT
    assert (await w.client.get(f"/v1/namespaces/{B}/collections/{w.b['collection_id']}", headers=key)).json()["document_count"] == 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_key_of_a_gets_nothing_of_b(world: World, case: Case) -> None:
    w = world
    if case.send is not None:
        r, sent = await case.send(w)
        kwargs: dict[str, Any] = {}
        url = sent
    else:
        url, kwargs = request_of(case, w)
        r = await w.client.request(case.method, url, headers=auth(w.a_key), **kwargs)
        sent = " ".join([unquote(url), json.dumps(kwargs, default=repr), *(w.b[label] for label in case.echoes)])
    assert r.status_code in case.expect, described(r)
    assert r.status_code != 422, f"422: the body is wrong, so the route's tenancy is not tested: {described(r)}"
    found = leaked(w, r, sent)
    assert not found, f"LEAK of B's {found}: {described(r)}"
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and {"type", "message", "details"} <= set(body["error"]), r.text
    if case.check is not None:
        await case.check(w, r)
    if case.oracle and case.send is None and r.status_code >= 400:
        # the same request naming nothing that exists: the answer must read the same
        named = [*w.markers.values(), B]  # B's namespace too: a namespace that exists reads like one that does not
        swaps = sorted({(v, decoy(v)) for v in named if v and v in sent and decoy(v) != v}, key=lambda s: -len(s[0]))
        if swaps:
            fake = await w.client.request(case.method, substitute(url, swaps), headers=auth(w.a_key), **substitute(kwargs, swaps))
            back = [(new, old) for old, new in swaps]
            assert fake.status_code == r.status_code, f"existence oracle: {described(r)} but for a made-up id {described(fake)}"
            assert substitute(fake.text, back) == r.text, f"existence oracle: {described(r)} but for a made-up id {described(fake)}"


async def test_b_resources_are_all_still_there_and_unchanged(world: World) -> None:
    w, key = world, auth(world.b_key)
    versions = (await w.client.get(f"/v1/namespaces/{B}/plugins/by-name/{B_PLUGIN}/versions", headers=key)).json()
    assert versions["active_version"] == B_V2 and len(versions["versions"]) == 2, versions
    upload = (await w.client.get(f"/v1/namespaces/{B}/plugins/uploads/{w.b['pending_upload_id']}", headers=key)).json()
    assert upload["status"] == "AWAITING_UPLOAD", upload
    status = (await w.client.get(f"/v1/namespaces/{B}/plugins/{w.b['plugin_id']}/status", headers=key)).json()
    assert status["deployment_status"] == "FAILED" and status["error"] == B_DEPLOY_ERROR, status
    model = (await w.client.get(f"/v1/namespaces/{B}/models/{B_MODEL}@{B_ALIAS}", headers=key)).json()
    assert model["model_id"] == w.b["model_id"] and model["sha256"] == w.b["model_sha256"] and model["aliases"] == [B_ALIAS], model
    pending = (await w.client.get(f"/v1/namespaces/{B}/models/{w.b['pending_model_id']}", headers=key)).json()
    assert pending["status"] == "AWAITING_UPLOAD", pending
    collection = (await w.client.get(f"/v1/namespaces/{B}/collections/{w.b['collection_id']}", headers=key)).json()
    assert collection["collection_name"] == B_COLLECTION and collection["document_count"] == 1, collection
    assert (await w.client.get(f"/v1/namespaces/{B}/tasks/{w.b['task_id']}", headers=key)).status_code == 200
    upload_record = await w.platform.catalog.get("object_uploads", w.b["pending_object_upload_id"])
    assert upload_record["status"] == "AWAITING_UPLOAD", upload_record
    assert await w.platform.objects(B).get_bytes(B_BUCKET, B_KEY) == B_OBJECT_BODY
    sealed = await SecretsStore.from_settings(w.platform.catalog, w.platform.settings).sealed(B)
    assert sealed == {B_SECRET_NAME: w.sealed_secret}
    keys = (await w.client.get(f"/v1/namespaces/{B}/api-keys", headers=key)).json()["api_keys"]
    assert [(k["key_id"], k["revoked"]) for k in keys if k["key_id"] == w.b["key_id"]] == [(w.b["key_id"], False)]


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves (HEAD, which Starlette adds to GET, left
    out). Newer FastAPI keeps included routers whole in `app.routes`: they are flattened here. A
    route without methods (a mount, a websocket) is listed as method `ANY`, never skipped."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is flat already
        routes: list[Any] = list(app.routes)
    else:
        routes = list(iter_route_contexts(app.routes))
    found = set()
    for route in routes:
        path = getattr(route, "path", None)
        assert path, f"a route with no path: {route!r}"
        methods = getattr(route, "methods", None) or {"ANY"}
        found |= {(method, path) for method in methods if method != "HEAD"}
    return found


async def test_every_route_is_covered(world: World) -> None:
    served = app_routes(world.app)
    driven = {(c.method, c.route) for c in CASES}
    uncovered = sorted(served - driven)
    assert not uncovered, f"routes no case drives: {uncovered}: add them to CASES (B-path 403, A-path 404, no marker)"
    stale = sorted(driven - served)
    assert not stale, f"cases for routes the app no longer serves: {stale}"
    tenant_routes = {r for r in served if r[1].startswith(NS)}
    assert served - tenant_routes == NO_TENANT, sorted(served - tenant_routes ^ NO_TENANT)
    for method, route in tenant_routes:
        forms = {c.ns for c in CASES if (c.method, c.route) == (method, route)}
        assert B in forms, f"{method} {route} is never driven with B's namespace in the path"
        assert A in forms, f"{method} {route} is never driven with A's namespace and B's ids or names"
