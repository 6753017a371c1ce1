"""Namespaces and the API keys scoped to them.

A key is shown once (`sk_<id>_<secret>`); the catalog keeps only its SHA-256. The admin key comes
from settings (or the data dir) and is never stored in the catalog.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from events.errors import AlreadyExists, Forbidden, InvalidInput, NotFound, Unauthorized
from infra.catalog.base import Catalog

NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_-]{2,62}$")
NAMESPACES = "namespaces"
API_KEYS = "api_keys"


@dataclass(frozen=True)
class Principal:
    key_id: str
    admin: bool
    namespaces: frozenset[str]

    def can_access(self, namespace: str) -> bool:
        return self.admin or namespace in self.namespaces

    def require(self, namespace: str) -> None:
        if not self.can_access(namespace):
            raise Forbidden(f"this API key is not scoped to namespace {namespace!r}", details={"namespace": namespace})

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this operation needs the admin key")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def check_namespace_name(name: str) -> None:
    if not NAMESPACE_RE.fullmatch(name or ""):
        raise InvalidInput(
            f"invalid namespace name {name!r}: 3-63 characters, lowercase letters, digits, '-' or '_', starting with a letter",
            details={"field": "namespace_name", "value": name},
        )


class Tenancy:
    def __init__(self, catalog: Catalog, admin_key: str) -> None:
        self._catalog = catalog
        self._admin_key = admin_key

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        if hmac.compare_digest(token.encode(), self._admin_key.encode()):
            return Principal(key_id="admin", admin=True, namespaces=frozenset())
        record = await self._catalog.get(API_KEYS, _digest(token))
        if record is None or record.get("revoked"):
            raise Unauthorized("invalid or revoked API key")
        return Principal(key_id=record["key_id"], admin=False, namespaces=frozenset(record["namespaces"]))

    async def create_namespace(self, name: str, *, description: str | None = None) -> dict:
        check_namespace_name(name)
        try:
            return await self._catalog.insert(
                NAMESPACES, name, {"namespace_name": name, "description": description, "created_at": _now()}
            )
        except AlreadyExists:
            raise AlreadyExists(f"namespace {name!r} already exists", details={"namespace": name}) from None

    async def get_namespace(self, name: str) -> dict:
        record = await self._catalog.get(NAMESPACES, name)
        if record is None:
            raise NotFound(f"namespace {name!r} does not exist", details={"namespace": name})
        return record

    async def list_namespaces(self, principal: Principal) -> list[dict]:
        if principal.admin:
            return await self._catalog.find(NAMESPACES, order_by="namespace_name")
        if not principal.namespaces:
            return []
        return await self._catalog.find(
            NAMESPACES, {"namespace_name": {"$in": sorted(principal.namespaces)}}, order_by="namespace_name"
        )

    async def issue_key(self, namespace: str, *, name: str | None = None) -> tuple[str, dict]:
        await self.get_namespace(namespace)
        key_id = secrets.token_hex(6)
        token = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
        record = {"key_id": key_id, "name": name, "namespaces": [namespace], "created_at": _now(), "revoked": False}
        await self._catalog.insert(API_KEYS, _digest(token), record)
        return token, record
