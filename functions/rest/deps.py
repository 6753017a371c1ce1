"""Request dependencies every router shares: the caller's key, and the namespace it may use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from functions.records.tenancy import Principal


async def authenticated(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    return await request.app.state.tenancy.authenticate(token)


async def namespace_scope(namespace: str, principal: Annotated[Principal, Depends(authenticated)]) -> str:
    """Path parameter `namespace`, checked against the key's scope (403 outside it)."""
    principal.require(namespace)
    return namespace


Auth = Annotated[Principal, Depends(authenticated)]
ScopedNamespace = Annotated[str, Depends(namespace_scope)]
