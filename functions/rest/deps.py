"""Request dependencies every router shares: the caller's key, and the namespace it may use.

`ScopedNamespace` checks the key both against the namespace in the path and against the role the
route needs; which role a route needs is decided here, in `needed_role`, and nowhere else:

- `admin`: key management and namespace secrets (`ADMIN_ROUTES`), whatever the method;
- `read`: GET and HEAD, and the POSTs that only query (`READ_ONLY_POSTS`);
- `write`: every other method.

Routes under `PLATFORM_ADMIN_PREFIX` (`/v1/admin/...`: dead letters) name no namespace: only the
platform admin key may call them, whatever the method (`PlatformAdmin`, and `needed_role` says
`admin` for them should one ever be scoped).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from functions.records.tenancy import Principal, Role

NAMESPACE = "/v1/namespaces/{namespace}"
PLATFORM_ADMIN_PREFIX = "/v1/admin"
# Route templates (and everything under them) that only a namespace admin may call.
ADMIN_ROUTES = (f"{NAMESPACE}/api-keys", f"{NAMESPACE}/secrets")
# POST routes that change nothing: searches and queries, open to `read` keys.
READ_ONLY_POSTS = frozenset({
    f"{NAMESPACE}/collections/{{collection_id}}/search",
    f"{NAMESPACE}/retrievers/feature_search",
    f"{NAMESPACE}/plugins/{{plugin_id}}/realtime",
})
READ_METHODS = frozenset({"GET", "HEAD"})
PRINCIPAL = "principal"  # where functions/rest/auth.py leaves the caller in the request's scope state


def needed_role(method: str, route: str | None) -> Role:
    """The role a request needs in its namespace: `route` is the matched route's path template
    (None, no route known: `admin`, failing closed)."""
    if route is None or any(route == prefix or route.startswith(prefix + "/") for prefix in (*ADMIN_ROUTES, PLATFORM_ADMIN_PREFIX)):
        return "admin"
    if method.upper() in READ_METHODS or (method.upper() == "POST" and route in READ_ONLY_POSTS):
        return "read"
    return "write"


async def authenticated(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller: the one the auth middleware already found, else the key read here."""
    found = getattr(request.state, PRINCIPAL, None)
    if isinstance(found, Principal):
        return found
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    principal = await request.app.state.tenancy.authenticate(token)
    setattr(request.state, PRINCIPAL, principal)
    return principal


async def namespace_scope(namespace: str, request: Request, principal: Annotated[Principal, Depends(authenticated)]) -> str:
    """Path parameter `namespace`, checked against the key's scope and role (403 outside them)."""
    route = getattr(request.scope.get("route"), "path", None)
    principal.require(namespace, needed_role(request.method, route))
    return namespace


async def platform_admin(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
    """The caller, when it holds the platform admin key (403 for every other key, namespace admins too)."""
    principal.require_admin()
    return principal


Auth = Annotated[Principal, Depends(authenticated)]
ScopedNamespace = Annotated[str, Depends(namespace_scope)]
PlatformAdmin = Annotated[Principal, Depends(platform_admin)]
