"""Plugins in the catalog: uploads, versions, and which version of each plugin is active.

Three kinds of record, every one carrying its namespace; a lookup outside it is a `NotFound`, never
a `Forbidden`, so a tenant cannot even learn that another tenant's id exists.
- `plugin_uploads` (key `upload_id`): one upload from request to outcome.
- `plugin_versions` (key `plugin_id`): one registered version: archive, digest, manifest, scan report.
- `plugins` (key `{namespace}/{name}`): the active version, changed by register and rollback.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from events.errors import Conflict, InvalidInput, NotFound
from functions.records.status import UploadStatus
from infra.catalog.base import Catalog, Update

UPLOADS = "plugin_uploads"
VERSIONS = "plugin_versions"
HEADS = "plugins"

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{2,63}$")
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def now() -> str:
    return datetime.now(UTC).isoformat()


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid plugin name {name!r}: 3-64 characters, letters, digits and _, starting with a letter",
            details={"field": "name", "value": name, "pattern": NAME_RE.pattern},
        )


def parse_version(version: str) -> tuple[int, int, int]:
    match = VERSION_RE.fullmatch(version or "")
    if not match:
        raise InvalidInput(f"invalid version {version!r}: expected X.Y.Z, e.g. 1.0.0", details={"field": "version", "value": version})
    return int(match[1]), int(match[2]), int(match[3])


def head_key(namespace: str, name: str) -> str:
    """Key of a plugin name's head (kind `plugins`): its active version and history."""
    return f"{namespace}/{name}"


def plugin_id_for(namespace: str, name: str, version: str) -> str:
    """Deterministic: registering the same version twice (a redelivered event) finds the same id."""
    return "plg_" + hashlib.sha256(f"{namespace}\0{name}\0{version}".encode()).hexdigest()[:24]


def archive_key(namespace: str, name: str, version: str) -> str:
    """Where a registered version's archive lives: written only by register, from the bytes it
    verified; no presigned URL ever points here."""
    return f"{namespace}/plugins/{name}/{version}/plugin.zip"


def upload_key(namespace: str, upload_id: str) -> str:
    return f"{namespace}/uploads/plugins/{upload_id}.zip"


def _in_namespace(record: dict | None, namespace: str, what: str, ident: str) -> dict:
    if record is None or record.get("namespace") != namespace:
        raise NotFound(f"{what} {ident!r} does not exist in namespace {namespace!r}", details={what.replace(' ', '_'): ident})
    return record


class PluginCatalog:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # --- uploads ------------------------------------------------------------------------------

    async def create_upload(
        self, namespace: str, name: str, *, version: str | None, description: str | None, bucket: str, expires_in: int,
        strict: bool = False,
    ) -> dict:
        check_name(name)
        if version is None:
            version = await self.next_version(namespace, name)
        else:
            parse_version(version)
            if await self.catalog.get(VERSIONS, plugin_id_for(namespace, name, version)) is not None:
                raise Conflict(
                    f"plugin {name!r} version {version} is already registered; push a new version or delete that one",
                    details={"name": name, "version": version},
                )
        upload_id = "upl_" + secrets.token_hex(12)
        created = datetime.now(UTC)
        record: dict[str, Any] = {
            "upload_id": upload_id, "namespace": namespace, "plugin_name": name, "version": version,
            "description": description, "strict": strict, "status": UploadStatus.AWAITING_UPLOAD,
            "archive": {"bucket": bucket, "key": upload_key(namespace, upload_id)},
            "created_at": created.isoformat(), "expires_at": (created + timedelta(seconds=expires_in)).isoformat(),
            "plugin_id": None, "validation_errors": [], "warnings": [], "feature_uris": [], "deployment_status": None,
        }
        return await self.catalog.insert(UPLOADS, upload_id, record)

    async def get_upload(self, namespace: str, upload_id: str) -> dict:
        return _in_namespace(await self.catalog.get(UPLOADS, upload_id), namespace, "upload", upload_id)

    async def update_upload(self, upload_id: str, changes: dict, *, expect: dict | None = None) -> dict | None:
        return await self.catalog.update(UPLOADS, upload_id, {**changes, "updated_at": now()}, expect=expect)

    @staticmethod
    def upload_change(upload_id: str, changes: dict, *, expect: dict | None = None) -> Update:
        """`update_upload` as a write for `Outbox.commit`, to go with the events it implies."""
        return Update(UPLOADS, upload_id, {**changes, "updated_at": now()}, expect=expect)

    # --- versions -----------------------------------------------------------------------------

    async def next_version(self, namespace: str, name: str) -> str:
        """One patch above the highest registered version; 1.0.0 for a new plugin."""
        versions = await self.versions(namespace, name)
        if not versions:
            return "1.0.0"
        major, minor, patch = parse_version(versions[0]["version"])
        return f"{major}.{minor}.{patch + 1}"

    async def versions(self, namespace: str, name: str) -> list[dict]:
        """Every registered version of a plugin, newest (highest) first."""
        records = await self.catalog.find(VERSIONS, {"namespace": namespace, "plugin_name": name})
        return sorted(records, key=lambda r: parse_version(r["version"]), reverse=True)

    async def get_version(self, namespace: str, plugin_id: str) -> dict:
        return _in_namespace(await self.catalog.get(VERSIONS, plugin_id), namespace, "plugin", plugin_id)

    async def version_by_name(self, namespace: str, name: str, version: str | None = None) -> dict:
        """A named version, or the active one when `version` is None."""
        if version is None:
            head = await self.head(namespace, name)
            if not head.get("active_plugin_id"):
                raise NotFound(f"plugin {name!r} has no active version", details={"name": name})
            return await self.get_version(namespace, head["active_plugin_id"])
        parse_version(version)
        record = await self.catalog.get(VERSIONS, plugin_id_for(namespace, name, version))
        return _in_namespace(record, namespace, "plugin version", f"{name}@{version}")

    async def head(self, namespace: str, name: str) -> dict:
        return _in_namespace(await self.catalog.get(HEADS, head_key(namespace, name)), namespace, "plugin name", name)

    async def list_plugins(self, namespace: str) -> list[dict]:
        """Every version in the namespace, each marked `active` or not, by name then newest first."""
        records = await self.catalog.find(VERSIONS, {"namespace": namespace})
        heads = {h["plugin_name"]: h.get("active_plugin_id") for h in await self.catalog.find(HEADS, {"namespace": namespace})}
        for record in records:
            record["active"] = heads.get(record["plugin_name"]) == record["plugin_id"]
        return sorted(records, key=lambda r: (r["plugin_name"], tuple(-n for n in parse_version(r["version"]))))

    async def add_version(self, record: dict) -> tuple[dict, bool]:
        """Store a new version; `(existing, False)` when this exact archive is already registered
        (a redelivered event), `Conflict` when the version holds another archive."""
        existing = await self.catalog.get(VERSIONS, record["plugin_id"])
        if existing is not None:
            if existing.get("sha256") == record["sha256"]:
                return existing, False
            raise Conflict(
                f"plugin {record['plugin_name']!r} version {record['version']} is already registered with another archive",
                details={"name": record["plugin_name"], "version": record["version"]},
            )
        return await self.catalog.upsert(VERSIONS, record["plugin_id"], record), True

    async def activate(self, namespace: str, name: str, plugin_id: str, *, reason: str) -> dict:
        """Point the plugin at `plugin_id`; the history records when and why."""
        key = head_key(namespace, name)
        for _ in range(10):
            head = await self.catalog.get(HEADS, key)
            entry = {"plugin_id": plugin_id, "at": now(), "reason": reason}
            if head is None:
                record = {"namespace": namespace, "plugin_name": name, "active_plugin_id": plugin_id, "revision": 1,
                          "history": [entry], "updated_at": now()}
                try:
                    return await self.catalog.insert(HEADS, key, record)
                except Exception:  # noqa: BLE001 - lost the race to create it: go round and update
                    continue
            changed = await self.catalog.update(
                HEADS,
                key,
                {
                    "active_plugin_id": plugin_id,
                    "revision": head["revision"] + 1,
                    "history": (head.get("history") or [])[-99:] + [entry],
                    "updated_at": now(),
                },
                expect={"revision": head["revision"]},
            )
            if changed is not None:
                return changed
        raise Conflict(f"plugin {name!r} is being changed concurrently; retry", details={"name": name})

    async def delete_version(self, namespace: str, plugin_id: str) -> tuple[dict, dict | None]:
        """Remove a version. If it was active, the highest remaining version becomes active.
        Returns the deleted record and the new active one (None when none is left)."""
        record = await self.get_version(namespace, plugin_id)
        name = record["plugin_name"]
        await self.catalog.delete(VERSIONS, plugin_id)
        head = await self.catalog.get(HEADS, head_key(namespace, name))
        if head is None or head.get("active_plugin_id") != plugin_id:
            active = await self.catalog.get(VERSIONS, head["active_plugin_id"]) if head and head.get("active_plugin_id") else None
            return record, active
        remaining = await self.versions(namespace, name)
        if not remaining:
            await self.catalog.delete(HEADS, head_key(namespace, name))
            return record, None
        await self.activate(namespace, name, remaining[0]["plugin_id"], reason=f"{record['version']} deleted")
        return record, remaining[0]

    async def history(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Versions newest first, with registration time, message, and activation events."""
        versions = await self.versions(namespace, name)
        if not versions:
            raise NotFound(f"plugin {name!r} does not exist in namespace {namespace!r}", details={"name": name})
        head = await self.head(namespace, name)
        return [
            {
                "plugin_id": v["plugin_id"], "version": v["version"], "message": v.get("description"),
                "registered_at": v.get("registered_at"), "sha256": v.get("sha256"),
                "active": v["plugin_id"] == head.get("active_plugin_id"),
                "activations": [h for h in head.get("history", []) if h["plugin_id"] == v["plugin_id"]],
            }
            for v in versions
        ]
