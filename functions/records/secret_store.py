"""Namespace secrets: encrypted at rest in the catalog, readable by plugins as `container.secrets`.

Values are sealed with AES-GCM under a key derived per namespace from the platform's master key
(`SLUICE_SECRETS_KEY`, or a key file generated into the data dir). The catalog holds only
ciphertext; the API lists names and never returns a value. Plugin processes get their own
namespace's derived key and sealed values, never the master key.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

from engine.namespace_secrets import SecretBox
from events.errors import InvalidInput, NotFound
from infra.catalog.base import Catalog
from infra.settings import Settings

SECRETS = "secrets"
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
MAX_SECRET_BYTES = 64 * 1024


def master_key(settings: Settings) -> bytes:
    from infra.bootstrap import read_or_create_secret

    if settings.secrets_key is not None:
        raw = settings.secrets_key.get_secret_value()
    else:
        raw = read_or_create_secret(settings.data_dir / "secrets.key")
    return raw.encode()


class SecretsStore:
    def __init__(self, catalog: Catalog, box: SecretBox) -> None:
        self.catalog = catalog
        self.box = box

    @classmethod
    def from_settings(cls, catalog: Catalog, settings: Settings) -> SecretsStore:
        return cls(catalog, SecretBox(master_key(settings)))

    @staticmethod
    def _key(namespace: str, name: str) -> str:
        return f"{namespace}/{name}"

    async def put(self, namespace: str, name: str, value: str) -> dict:
        if not SECRET_NAME_RE.fullmatch(name or ""):
            raise InvalidInput(
                f"invalid secret name {name!r}: letters, digits, '_', '.', '-', starting with a letter or '_'",
                details={"field": "name", "value": name},
            )
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise InvalidInput(f"secret {name!r} is larger than {MAX_SECRET_BYTES} bytes", details={"field": "value"})
        record = {
            "namespace": namespace, "name": name, "sealed": self.box.encrypt(namespace, name, value),
            "updated_at": datetime.now(UTC).isoformat(),
        }
        await self.catalog.upsert(SECRETS, self._key(namespace, name), record)
        return {"name": name, "updated_at": record["updated_at"]}

    async def delete(self, namespace: str, name: str) -> None:
        if not await self.catalog.delete(SECRETS, self._key(namespace, name)):
            raise NotFound(f"secret {name!r} does not exist in namespace {namespace!r}", details={"name": name})

    async def list(self, namespace: str) -> list[dict]:
        records = await self.catalog.find(SECRETS, {"namespace": namespace}, order_by="name")
        return [{"name": r["name"], "updated_at": r["updated_at"]} for r in records]

    async def sealed(self, namespace: str) -> dict[str, str]:
        return {r["name"]: r["sealed"] for r in await self.catalog.find(SECRETS, {"namespace": namespace})}

    async def context_for(self, namespace: str) -> dict:
        """What a plugin process of `namespace` needs to read its secrets, and nothing more."""
        return {"secrets": {
            "key": base64.b64encode(self.box.namespace_key(namespace)).decode(),
            "sealed": await self.sealed(namespace),
        }}
