"""API key routes of a namespace: mint, list, revoke (namespace `admin` role or the admin key).

`POST /v1/namespaces/{ns}/api-keys` mints a key (shown only in that answer), `GET` lists the
namespace's keys without their secrets, `DELETE .../api-keys/{key_id}` revokes one at once. The role
these routes need is set in functions/rest/deps.py (`ADMIN_ROUTES`) like every other route's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from functions.records.tenancy import Role, Tenancy
from functions.rest.deps import Auth, ScopedNamespace


class CreateApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, max_length=200, validation_alias=AliasChoices("label", "name"),
                              description="A label for the key (`name` is accepted too).", examples=["ci"])
    role: Role = Field(default="write", description="`read`, `write` (read and change) or `admin` (write, and "
                       "manage the namespace's keys and secrets).", examples=["read"])
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Expire after this many days.",
                                        examples=[90])
    expires_at: datetime | None = Field(default=None, description="Expire at this time (ISO 8601; UTC if no zone). "
                                        "Give this or expires_in_days; neither: never expires.")


class ApiKey(BaseModel):
    key_id: str = Field(description="Public id of the key (its revocation handle).", examples=["3f9a0c1d2e4b"])
    namespace: str = Field(description="The namespace the key is scoped to.", examples=["acme"])
    label: str | None = Field(default=None, description="The key's label.", examples=["ci"])
    role: Role = Field(description="What the key may do in its namespace.", examples=["write"])
    created_at: str | None = Field(default=None, description="ISO 8601 creation time.")
    expires_at: str | None = Field(default=None, description="ISO 8601 expiry time; null: never.")
    revoked: bool = Field(default=False, description="Whether the key was revoked.")
    revoked_at: str | None = Field(default=None, description="ISO 8601 revocation time.")


class ApiKeyIssued(ApiKey):
    api_key: str = Field(description="The key; shown only this once.")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKey] = Field(description="The namespace's keys, oldest first; revoked and expired ones included.")


def _tenancy(request: Request) -> Tenancy:
    return request.app.state.tenancy


def router() -> APIRouter:
    api = APIRouter(prefix="/v1/namespaces/{namespace}/api-keys", tags=["api keys"])

    @api.post("", status_code=201, response_model=ApiKeyIssued)
    async def issue_key(namespace: ScopedNamespace, principal: Auth, request: Request, body: CreateApiKey | None = None) -> Any:
        """Mint a key of this namespace (admin key, or an `admin` key of the namespace)."""
        body = body or CreateApiKey()
        token, view = await _tenancy(request).issue_key(
            namespace, by=principal, name=body.label, role=body.role, expires_in_days=body.expires_in_days,
            expires_at=body.expires_at,
        )
        return {**view, "api_key": token}

    @api.get("", response_model=ApiKeyList)
    async def list_keys(namespace: ScopedNamespace, principal: Auth, request: Request) -> Any:
        """The namespace's keys: ids, labels, roles, times; never a secret."""
        return {"api_keys": await _tenancy(request).list_keys(namespace, by=principal)}

    @api.delete("/{key_id}", response_model=ApiKey)
    async def revoke_key(namespace: ScopedNamespace, key_id: str, principal: Auth, request: Request) -> Any:
        """Revoke a key of this namespace; it answers 401 from the next request on."""
        return await _tenancy(request).revoke_key(namespace, key_id, by=principal)

    return api


__all__ = ["router"]
