"""Namespaces and the API keys scoped to them (trusted side: never sees plugin code).

A key is shown once (`sk_<id>_<secret>`); the catalog keeps only its SHA-256, with its public
`key_id`, label, role, creation and expiry times, and whether (and when) it was revoked. The admin
key comes from settings (or the data dir) and is never stored in the catalog.

Roles, per key and namespace: `read` ⊂ `write` ⊂ `admin`. Only the platform admin key or an
`admin` key of the namespace mints, lists or revokes that namespace's keys. Every request reads the
key's record again (nothing is cached), so a revoked or expired key fails on the very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from events.errors import AlreadyExists, Forbidden, InvalidInput, NotFound, Unauthorized
from infra.catalog.base import Catalog

NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_-]{2,62}$")
NAMESPACES = "namespaces"
API_KEYS = "api_keys"

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # weakest first: each includes the ones before it
LEGACY_ROLE: Role = "write"  # keys issued before roles existed
MAX_EXPIRY = timedelta(days=3650)
# What a key listing shows: never the secret, never its digest (the record's `id`).
KEY_FIELDS = ("key_id", "namespace", "label", "role", "created_at", "expires_at", "revoked", "revoked_at")


def role_includes(held: str, needed: str) -> bool:
    """Whether role `held` includes role `needed` (an unknown role includes nothing)."""
    return held in ROLES and needed in ROLES and ROLES.index(held) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the platform admin (`admin`), or a key with one `role` in `namespaces`."""

    key_id: str
    admin: bool
    namespaces: frozenset[str]
    role: Role = "read"

    def can_access(self, namespace: str, role: Role = "read") -> bool:
        return self.admin or (namespace in self.namespaces and role_includes(self.role, role))

    def require(self, namespace: str, role: Role = "read") -> None:
        """Forbidden (403) unless this key may act with `role` in `namespace`."""
        if self.admin:
            return
        if namespace not in self.namespaces:
            raise Forbidden(f"this API key is not scoped to namespace {namespace!r}", details={"namespace": namespace})
        if not role_includes(self.role, role):
            raise Forbidden(
                f"this needs the {role!r} role in namespace {namespace!r}; this API key has {self.role!r}",
                details={"namespace": namespace, "required_role": role, "role": self.role},
            )

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this operation needs the admin key")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _now() -> str:
    return _utc_now().isoformat()


def check_namespace_name(name: str) -> None:
    if not NAMESPACE_RE.fullmatch(name or ""):
        raise InvalidInput(
            f"invalid namespace name {name!r}: 3-63 characters, lowercase letters, digits, '-' or '_', starting with a letter",
            details={"field": "namespace_name", "value": name},
        )


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidInput(f"invalid role {role!r}: one of {', '.join(ROLES)}", details={"field": "role", "value": role})
    return role


def key_view(record: dict, namespace: str) -> dict:
    """A key's record as a listing shows it: no secret, no digest."""
    view = {
        "key_id": record["key_id"], "namespace": namespace, "label": record.get("name"),
        "role": record.get("role") or LEGACY_ROLE, "created_at": record.get("created_at"),
        "expires_at": record.get("expires_at"), "revoked": bool(record.get("revoked")), "revoked_at": record.get("revoked_at"),
    }
    return {field: view[field] for field in KEY_FIELDS}


class Tenancy:
    def __init__(self, catalog: Catalog, admin_key: str, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._catalog = catalog
        self._admin_key = admin_key
        self.clock = clock

    async def authenticate(self, token: str | None) -> Principal:
        """The caller of `token`, read from the catalog on every call (revocation and expiry
        apply at once); Unauthorized (401) for a missing, unknown, revoked or expired key."""
        if not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        if hmac.compare_digest(token.encode(), self._admin_key.encode()):
            return Principal(key_id="admin", admin=True, namespaces=frozenset(), role="admin")
        record = await self._catalog.get(API_KEYS, _digest(token))
        if record is None or record.get("revoked"):
            raise Unauthorized("invalid or revoked API key")
        expires_at = record.get("expires_at")
        if expires_at and datetime.fromisoformat(expires_at) <= self.clock():
            raise Unauthorized(
                f"this API key expired at {expires_at}; ask a namespace admin for a new one",
                details={"key_id": record["key_id"], "expires_at": expires_at},
            )
        role = record.get("role") or LEGACY_ROLE
        return Principal(key_id=record["key_id"], admin=False, namespaces=frozenset(record["namespaces"]),
                         role=role if role in ROLES else "read")

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

    # -- keys ---------------------------------------------------------------------------------------

    def expiry(self, *, days: int | None = None, at: datetime | None = None) -> datetime | None:
        """When a key asked for with `expires_in_days` or `expires_at` expires (None: never)."""
        if days is not None and at is not None:
            raise InvalidInput("give expires_in_days or expires_at, not both", details={"field": "expires_in_days"})
        if days is not None:
            if not 1 <= days <= MAX_EXPIRY.days:
                raise InvalidInput(f"expires_in_days must be 1 to {MAX_EXPIRY.days}",
                                   details={"field": "expires_in_days", "value": days})
            return self.clock() + timedelta(days=days)
        if at is None:
            return None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        if at <= self.clock():
            raise InvalidInput("expires_at is in the past", details={"field": "expires_at", "value": at.isoformat()})
        if at > self.clock() + MAX_EXPIRY:
            raise InvalidInput(f"expires_at is more than {MAX_EXPIRY.days} days away",
                               details={"field": "expires_at", "value": at.isoformat()})
        return at

    async def issue_key(self, namespace: str, *, by: Principal, name: str | None = None, role: str = "write",
                        expires_in_days: int | None = None, expires_at: datetime | None = None) -> tuple[str, dict]:
        """A new key of `namespace` with `role`, minted by `by`: the platform admin or an `admin`
        key of that namespace (Forbidden otherwise). Returns (the key, shown only now; its view)."""
        by.require(namespace, "admin")
        role = check_role(role)
        await self.get_namespace(namespace)
        expiry = self.expiry(days=expires_in_days, at=expires_at)
        key_id = secrets.token_hex(6)
        token = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
        record = {"key_id": key_id, "name": name, "namespaces": [namespace], "role": role, "created_at": self.clock().isoformat(),
                  "created_by": by.key_id, "expires_at": expiry.astimezone(UTC).isoformat() if expiry else None,
                  "revoked": False, "revoked_at": None}
        await self._catalog.insert(API_KEYS, _digest(token), record)
        return token, key_view(record, namespace)

    async def list_keys(self, namespace: str, *, by: Principal) -> list[dict]:
        """The namespace's keys, revoked and expired ones included, oldest first; never a secret."""
        by.require(namespace, "admin")
        await self.get_namespace(namespace)
        records = await self._catalog.find(API_KEYS, {"namespaces": namespace}, order_by="created_at")
        return [key_view(record, namespace) for record in records]

    async def revoke_key(self, namespace: str, key_id: str, *, by: Principal) -> dict:
        """Revoke one key of `namespace` (at once: the next request with it answers 401). A key of
        another namespace is NotFound, as is one that does not exist; revoking twice is a no-op."""
        by.require(namespace, "admin")
        found = await self._catalog.find(API_KEYS, {"key_id": key_id, "namespaces": namespace})
        if not found:
            raise NotFound(f"no API key {key_id!r} in namespace {namespace!r}",
                           details={"namespace": namespace, "key_id": key_id})
        record = found[0]
        if not record.get("revoked"):
            changed = await self._catalog.update(API_KEYS, record["id"], {"revoked": True, "revoked_at": self.clock().isoformat()})
            record = changed or record
        return key_view(record, namespace)
