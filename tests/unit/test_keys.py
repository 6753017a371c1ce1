"""API keys on the in-memory catalog: roles, who may mint, expiry, revocation, listings without
secrets; and the one table that says which role a route needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from functions.records.tenancy import API_KEYS, KEY_FIELDS, Principal, Tenancy, role_includes
from functions.rest.auth import needs_key
from functions.rest.deps import needed_role
from infra.catalog.memory import MemoryCatalog

pytestmark = pytest.mark.unit
ADMIN_KEY = "sk_admin_" + "k" * 32
NS = "/v1/namespaces/{namespace}"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def world():
    catalog = MemoryCatalog()
    await catalog.connect()
    clock = Clock()
    tenancy = Tenancy(catalog, ADMIN_KEY, clock=clock)
    admin = await tenancy.authenticate(ADMIN_KEY)
    for name in ("acme", "globex"):
        await tenancy.create_namespace(name)
    return tenancy, catalog, clock, admin


async def mint(tenancy: Tenancy, namespace: str, role: str, by: Principal, **kw) -> tuple[str, Principal]:
    token, _ = await tenancy.issue_key(namespace, by=by, role=role, **kw)
    return token, await tenancy.authenticate(token)


# --- roles -----------------------------------------------------------------------------------------

def test_roles_nest_admin_over_write_over_read():
    assert role_includes("admin", "write") and role_includes("admin", "read") and role_includes("write", "read")
    assert not role_includes("read", "write") and not role_includes("write", "admin")
    assert not role_includes("owner", "read")


async def test_a_read_key_may_read_but_not_write_and_the_refusal_names_the_needed_role(world):
    tenancy, _, _, admin = world
    _, reader = await mint(tenancy, "acme", "read", admin)
    assert reader.role == "read" and reader.namespaces == {"acme"}
    reader.require("acme", "read")
    with pytest.raises(Forbidden, match="'write'") as refused:
        reader.require("acme", "write")
    assert refused.value.details == {"namespace": "acme", "required_role": "write", "role": "read"}


async def test_a_key_is_refused_outside_its_namespace_whatever_its_role(world):
    tenancy, _, _, admin = world
    _, acme_admin = await mint(tenancy, "acme", "admin", admin)
    with pytest.raises(Forbidden, match="globex"):
        acme_admin.require("globex", "read")


async def test_the_platform_admin_key_passes_every_check(world):
    *_, admin = world
    assert admin.admin and admin.role == "admin"
    admin.require("anything", "admin")


# --- minting -----------------------------------------------------------------------------------------

async def test_keys_default_to_write_and_the_issued_view_has_no_secret(world):
    tenancy, catalog, _, admin = world
    token, view = await tenancy.issue_key("acme", by=admin, name="ci")
    assert set(view) == set(KEY_FIELDS)
    assert view["role"] == "write" and view["label"] == "ci" and view["namespace"] == "acme" and view["expires_at"] is None
    assert token.startswith(f"sk_{view['key_id']}_")
    [stored] = await catalog.find(API_KEYS, {"key_id": view["key_id"]})
    assert token not in str(stored)


@pytest.mark.parametrize("role", ["read", "write"])
async def test_a_read_or_write_key_cannot_mint_keys(world, role):
    tenancy, _, _, admin = world
    _, caller = await mint(tenancy, "acme", role, admin)
    with pytest.raises(Forbidden, match="'admin'"):
        await tenancy.issue_key("acme", by=caller, role="read")


async def test_a_namespace_admin_mints_every_role_in_its_own_namespace_only(world):
    tenancy, _, _, admin = world
    _, acme_admin = await mint(tenancy, "acme", "admin", admin)
    for role in ("read", "write", "admin"):
        _, minted = await mint(tenancy, "acme", role, acme_admin)
        assert minted.role == role and minted.namespaces == {"acme"}
    with pytest.raises(Forbidden):
        await tenancy.issue_key("globex", by=acme_admin, role="read")


async def test_an_unknown_role_or_namespace_is_refused(world):
    tenancy, _, _, admin = world
    with pytest.raises(InvalidInput, match="role"):
        await tenancy.issue_key("acme", by=admin, role="owner")
    with pytest.raises(NotFound):
        await tenancy.issue_key("ghost", by=admin)


async def test_an_expiry_in_the_past_both_kinds_of_expiry_or_a_silly_one_are_refused(world):
    tenancy, _, clock, admin = world
    with pytest.raises(InvalidInput, match="past"):
        await tenancy.issue_key("acme", by=admin, expires_at=clock.now - timedelta(seconds=1))
    with pytest.raises(InvalidInput, match="not both"):
        await tenancy.issue_key("acme", by=admin, expires_in_days=1, expires_at=clock.now + timedelta(days=1))
    with pytest.raises(InvalidInput):
        await tenancy.issue_key("acme", by=admin, expires_in_days=0)


# --- expiry and revocation -----------------------------------------------------------------------------

async def test_an_expired_key_answers_unauthorized_saying_it_expired(world):
    tenancy, _, clock, admin = world
    token, view = await tenancy.issue_key("acme", by=admin, expires_in_days=30)
    assert datetime.fromisoformat(view["expires_at"]) == clock.now + timedelta(days=30)
    clock.now += timedelta(days=29)
    await tenancy.authenticate(token)
    clock.now += timedelta(days=1)
    with pytest.raises(Unauthorized, match="expired"):
        await tenancy.authenticate(token)


async def test_a_naive_expires_at_is_read_as_utc(world):
    tenancy, _, clock, admin = world
    _, view = await tenancy.issue_key("acme", by=admin, expires_at=datetime(2030, 1, 2, 12, 0))
    assert view["expires_at"] == "2030-01-02T12:00:00+00:00"


async def test_a_revoked_key_fails_on_the_next_authentication(world):
    tenancy, _, _, admin = world
    token, view = await tenancy.issue_key("acme", by=admin, role="read")
    await tenancy.authenticate(token)
    revoked = await tenancy.revoke_key("acme", view["key_id"], by=admin)
    assert revoked["revoked"] is True and revoked["revoked_at"]
    with pytest.raises(Unauthorized, match="revoked"):
        await tenancy.authenticate(token)
    again = await tenancy.revoke_key("acme", view["key_id"], by=admin)
    assert again["revoked_at"] == revoked["revoked_at"]


async def test_another_namespaces_key_id_is_not_found_and_stays_valid(world):
    tenancy, _, _, admin = world
    _, acme_admin = await mint(tenancy, "acme", "admin", admin)
    globex_token, globex_view = await tenancy.issue_key("globex", by=admin)
    with pytest.raises(NotFound):
        await tenancy.revoke_key("acme", globex_view["key_id"], by=acme_admin)
    with pytest.raises(NotFound):
        await tenancy.revoke_key("acme", globex_view["key_id"], by=admin)
    with pytest.raises(Forbidden):
        await tenancy.revoke_key("globex", globex_view["key_id"], by=acme_admin)
    assert (await tenancy.authenticate(globex_token)).namespaces == {"globex"}


async def test_a_write_key_cannot_list_or_revoke(world):
    tenancy, _, _, admin = world
    _, writer = await mint(tenancy, "acme", "write", admin)
    with pytest.raises(Forbidden):
        await tenancy.list_keys("acme", by=writer)
    with pytest.raises(Forbidden):
        await tenancy.revoke_key("acme", writer.key_id, by=writer)


# --- listing ---------------------------------------------------------------------------------------

async def test_a_listing_shows_the_namespaces_keys_only_and_never_a_secret_or_digest(world):
    tenancy, catalog, clock, admin = world
    tokens = []
    for i, role in enumerate(("read", "write", "admin")):
        clock.now += timedelta(seconds=1)
        tokens.append((await tenancy.issue_key("acme", by=admin, name=f"k{i}", role=role))[0])
    clock.now += timedelta(seconds=1)
    await tenancy.issue_key("globex", by=admin, name="theirs")
    _, acme_admin = await mint(tenancy, "acme", "admin", admin)
    listed = await tenancy.list_keys("acme", by=acme_admin)
    assert [k["label"] for k in listed][:3] == ["k0", "k1", "k2"] and len(listed) == 4
    assert [k["role"] for k in listed][:3] == ["read", "write", "admin"]
    digests = {record["id"] for record in await catalog.find(API_KEYS)}
    for view in listed:
        assert set(view) == set(KEY_FIELDS)
        text = str(view)
        assert not any(token in text or token.rsplit("_", 1)[1] in text for token in tokens)
        assert not any(digest in text for digest in digests)


async def test_a_key_stored_before_roles_existed_reads_as_write(world):
    tenancy, catalog, _, admin = world
    token, view = await tenancy.issue_key("acme", by=admin)
    [stored] = await catalog.find(API_KEYS, {"key_id": view["key_id"]})
    await catalog.update(API_KEYS, stored["id"], {"role": None})
    assert (await tenancy.authenticate(token)).role == "write"


# --- which role a route needs, which paths need a key ----------------------------------------------

@pytest.mark.parametrize(("method", "route", "role"), [
    ("GET", f"{NS}/collections", "read"),
    ("HEAD", f"{NS}/plugins/{{plugin_id}}", "read"),
    ("POST", f"{NS}/collections/{{collection_id}}/search", "read"),
    ("POST", f"{NS}/retrievers/feature_search", "read"),
    ("POST", f"{NS}/plugins/{{plugin_id}}/realtime", "read"),
    ("POST", f"{NS}/collections", "write"),
    ("DELETE", f"{NS}/models/{{model_id}}", "write"),
    ("PUT", f"{NS}/models/{{model_id}}/aliases/{{alias}}", "write"),
    ("GET", NS, "read"),
    ("POST", f"{NS}/api-keys", "admin"),
    ("GET", f"{NS}/api-keys", "admin"),
    ("DELETE", f"{NS}/api-keys/{{key_id}}", "admin"),
    ("GET", f"{NS}/secrets", "admin"),
    ("PUT", f"{NS}/secrets/{{name}}", "admin"),
    ("GET", None, "admin"),
])
def test_the_role_table(method, route, role):
    assert needed_role(method, route) == role


@pytest.mark.parametrize(("path", "needed"), [
    ("/v1/namespaces", True), ("/v1/namespaces/acme/models", True), ("/v1/nope", True),
    ("/v1/health", False), ("/v1/objects/b/k.txt", False), ("/v1/docs", False), ("/v1/openapi.json", False),
    ("/", False), ("/v1", False), ("/v1/healthz", True), ("/v1/objectsx", True),
])
def test_which_paths_need_a_key_before_the_body(path, needed):
    assert needs_key(path) is needed
