"""The model registry: model records and aliases in the catalog.

Two kinds of record, every one carrying its namespace; a lookup outside it is a `NotFound` (never a
`Forbidden`), so a tenant cannot even learn that another tenant's model exists.
- `models` (key `{namespace}|{model_id}`, `model_id = {name}_{major}_{minor}_{patch}`): one model
  version from upload request to outcome: AWAITING_UPLOAD → VALIDATING → REGISTERED | REJECTED.
  `archive` names where the registered archive lives (`{ns}/models/{name}/{version}/model.tar.gz`
  in `settings.models_bucket`); only this module writes that key, from bytes it validated. Uploads
  land under `upload` (`{ns}/uploads/models/{upload_id}.tar.gz`), which presigned URLs may write.
- `model_aliases` (key `{namespace}|{name}@{alias}`): `{model_id}`; `resolve` accepts either.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from engine.models.validate import MODEL_FORMATS, ModelFinding
from events.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from events.payloads import Finding
from functions.records.status import DeploymentStatus, ModelStatus
from infra.catalog.base import Catalog, Update
from infra.settings import Settings

log = structlog.get_logger("sluice.models")

MODELS = "models"
ALIASES = "model_aliases"

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{2,63}$")
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

DEFAULT_RESOURCES = {"num_cpus": 1.0, "num_gpus": 0.0, "memory_gb": 4.0}  # the seeds' documented defaults
ARCHIVE_CONTENT_TYPE = "application/gzip"

# Registry rule ids (the validator owns MDL1xx-6xx; MDL102/MDL103 are reused for the size checks).
RULE_TOO_LARGE, RULE_EMPTY, RULE_MISSING, RULE_TIMEOUT = "MDL102", "MDL103", "MDL901", "MDL902"

# Validation time limit: a base plus time per byte (gunzip, sha256 and a weights_only load of a
# 10 GB archive take minutes). `settings.models_validation_timeout_s`, when that setting exists,
# replaces the computed limit.
VALIDATION_BASE_S = 300.0
VALIDATION_BYTES_PER_S = 20 * 1024 * 1024


def now() -> str:
    return datetime.now(UTC).isoformat()


# --- names and ids ----------------------------------------------------------------------------

def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid model name {name!r}: 3-64 characters, letters, digits, _ and -, starting with a letter",
            details={"field": "name", "value": name, "pattern": NAME_RE.pattern},
        )


def parse_version(version: str) -> tuple[int, int, int]:
    match = VERSION_RE.fullmatch(version or "") if isinstance(version, str) else None
    if not match:
        raise InvalidInput(f"invalid model version {version!r}: expected X.Y.Z, e.g. 1.0.0",
                           details={"field": "version", "value": version})
    return int(match[1]), int(match[2]), int(match[3])


def check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise InvalidInput(
            f"invalid alias {alias!r}: 1-32 lowercase letters, digits, _ and -, starting with a letter",
            details={"field": "alias", "value": alias, "pattern": ALIAS_RE.pattern},
        )


def check_format(model_format: str) -> None:
    if model_format not in MODEL_FORMATS:
        raise InvalidInput(f"invalid model_format {model_format!r}: accepted: {', '.join(MODEL_FORMATS)}",
                           details={"field": "model_format", "value": model_format})


def model_id_for(name: str, version: str) -> str:
    """`my-embedding-model` 1.0.0 → `my-embedding-model_1_0_0` (the seeds' ids). The suffix is always
    three numbers, so an id names exactly one (name, version)."""
    check_name(name)
    major, minor, patch = parse_version(version)
    return f"{name}_{major}_{minor}_{patch}"


def model_key(namespace: str, model_id: str) -> str:
    return f"{namespace}|{model_id}"


def alias_key(namespace: str, name: str, alias: str) -> str:
    return f"{namespace}|{name}@{alias}"


def archive_key(namespace: str, name: str, version: str) -> str:
    """Where a registered model's archive lives: written only by `handle`, from the bytes it
    validated; no presigned URL ever points here."""
    return f"{namespace}/models/{name}/{version}/model.tar.gz"


def upload_key(namespace: str, upload_id: str) -> str:
    return f"{namespace}/uploads/models/{upload_id}.tar.gz"


def check_resources(resources: dict[str, Any]) -> dict[str, float]:
    """`{num_cpus, num_gpus, memory_gb}`, each a finite number ≥ 0 (defaults from the seeds)."""
    checked: dict[str, float] = {}
    for field, default in DEFAULT_RESOURCES.items():
        value = resources.get(field)
        if value is None or value == "":
            value = default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{field} must be a number, got {value!r}", details={"field": field}) from None
        if not (0 <= number < 1e6):
            raise InvalidInput(f"{field} must be between 0 and 1e6, got {value!r}", details={"field": field})
        checked[field] = number
    return checked


def finding_dict(finding: ModelFinding | dict) -> dict[str, str]:
    if isinstance(finding, dict):
        return {"rule_id": finding["rule_id"], "file": finding.get("file", ""), "message": finding["message"]}
    return {"rule_id": finding.rule_id, "file": finding.file, "message": finding.message}


def describe_finding(finding: dict) -> str:
    """`model.pt: pickle imports posix.system, ...` (the archive itself reads `(archive)`)."""
    return f"{finding.get('file') or '(archive)'}: {finding['message']}"


def plain_json(value: Any) -> Any:
    """Validator details as plain JSON (the catalog stores nothing else)."""
    return json.loads(json.dumps(value, default=str))


def _in_namespace(record: dict | None, namespace: str, ref: str) -> dict:
    if record is None or record.get("namespace") != namespace:
        raise NotFound(f"model {ref!r} does not exist in namespace {namespace!r}", details={"model_id": ref, "namespace": namespace})
    return record


# --- the repository ---------------------------------------------------------------------------

class ModelRegistry:
    """Model records and aliases over the Catalog port."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def occupied(self, namespace: str, *, excluding: str | None = None) -> int:
        """Models that count against the namespace's limit: registered, validating, and uploads
        whose URL has not expired. REJECTED ones do not count."""
        held = await self.catalog.find(
            MODELS,
            {"namespace": namespace, "status": {"$in": [ModelStatus.REGISTERED, ModelStatus.VALIDATING, ModelStatus.AWAITING_UPLOAD]}},
        )
        stamp = now()
        return sum(
            1
            for r in held
            if r["model_id"] != excluding and (r["status"] != ModelStatus.AWAITING_UPLOAD or r.get("expires_at", "") > stamp)
        )

    async def check_capacity(self, namespace: str, limit: int, *, excluding: str | None = None) -> None:
        count = await self.occupied(namespace, excluding=excluding)
        if count >= limit:
            raise self._full(namespace, count, limit)

    @staticmethod
    def _full(namespace: str, count: int, limit: int) -> Conflict:
        return Conflict(
            f"namespace {namespace!r} already holds {count} models (registered or uploading); the limit is {limit} "
            "models per namespace (SLUICE_MODELS_MAX_PER_NAMESPACE): delete a model version first",
            details={"namespace": namespace, "models": count, "limit": limit},
        )

    async def create(
        self, namespace: str, *, name: str, version: str, model_format: str, framework: str | None, task_type: str | None,
        resources: dict[str, Any], bucket: str, max_models: int, expires_in: int,
    ) -> dict:
        """A new AWAITING_UPLOAD record. An id that is REGISTERED or VALIDATING is `AlreadyExists`;
        a REJECTED record or an earlier unconfirmed upload of the same id is replaced (the
        user fixes the archive and uploads the same version again)."""
        model_id = model_id_for(name, version)
        check_format(model_format)
        checked = check_resources(resources)
        await self.check_capacity(namespace, max_models, excluding=model_id)
        created = datetime.now(UTC)
        upload_id = "mup_" + secrets.token_hex(12)
        record: dict[str, Any] = {
            "namespace": namespace, "model_id": model_id, "name": name, "version": version, "model_format": model_format,
            "framework": framework or None, "task_type": task_type or None, "resources": checked,
            "status": ModelStatus.AWAITING_UPLOAD, "errors": [],
            "archive": {"bucket": bucket, "key": archive_key(namespace, name, version)},
            "upload": {"bucket": bucket, "key": upload_key(namespace, upload_id)}, "upload_id": upload_id,
            "sha256": None, "size_bytes": None, "files": [], "details": {}, "total_bytes": None,
            "deployment_status": DeploymentStatus.NOT_DEPLOYED, "cached": False, "created_at": created.isoformat(),
            "expires_at": (created + timedelta(seconds=expires_in)).isoformat(), "registered_at": None, "aliases": [],
        }
        key = model_key(namespace, model_id)
        try:
            stored = await self.catalog.insert(MODELS, key, record)
        except AlreadyExists:
            replaced = await self.catalog.update(
                MODELS, key, record, expect={"status": {"$in": [ModelStatus.REJECTED, ModelStatus.AWAITING_UPLOAD]}}
            )
            if replaced is None:
                raise self._exists(namespace, model_id, name, version) from None
            stored = replaced
        count = await self.occupied(namespace)
        if count > max_models:  # lost a race with a concurrent upload: back out
            await self.catalog.delete(MODELS, key)
            raise self._full(namespace, count - 1, max_models)
        return stored

    @staticmethod
    def _exists(namespace: str, model_id: str, name: str, version: str) -> AlreadyExists:
        return AlreadyExists(
            f"model {model_id!r} ({name} {version}) already exists in namespace {namespace!r}: upload a new version "
            "(or delete this one first)",
            details={"model_id": model_id, "name": name, "version": version},
        )

    async def get(self, namespace: str, model_id: str) -> dict:
        return _in_namespace(await self.catalog.get(MODELS, model_key(namespace, model_id)), namespace, model_id)

    async def resolve(self, namespace: str, ref: str) -> dict:
        """A model by id (`my-model_1_0_0`), alias (`my-model@prod`) or version (`my-model@1.0.0`)."""
        if "@" not in ref:
            return await self.get(namespace, ref)
        name, _, tag = ref.partition("@")
        if VERSION_RE.fullmatch(tag) and NAME_RE.fullmatch(name):
            return await self.get(namespace, model_id_for(name, tag))
        entry = await self.catalog.get(ALIASES, alias_key(namespace, name, tag))
        if entry is None or entry.get("namespace") != namespace:
            raise NotFound(f"model alias {ref!r} does not exist in namespace {namespace!r}",
                           details={"model_id": ref, "namespace": namespace})
        return await self.get(namespace, entry["model_id"])

    async def list(self, namespace: str) -> list[dict]:
        """Every model of the namespace, by name, newest version first."""
        records = await self.catalog.find(MODELS, {"namespace": namespace})
        return sorted(records, key=lambda r: (r["name"], tuple(-n for n in parse_version(r["version"]))))

    async def update(self, namespace: str, model_id: str, changes: dict, *, expect: dict | None = None) -> dict | None:
        return await self.catalog.update(MODELS, model_key(namespace, model_id), {**changes, "updated_at": now()}, expect=expect)

    @staticmethod
    def change(namespace: str, model_id: str, changes: dict, *, expect: dict | None = None) -> Update:
        """`update` as a write for `Outbox.commit`, to go with the events it implies."""
        return Update(MODELS, model_key(namespace, model_id), {**changes, "updated_at": now()}, expect=expect)

    async def delete(self, namespace: str, model_id: str) -> dict:
        """Remove the record and every alias pointing at it; answers the removed record."""
        record = await self.get(namespace, model_id)
        await self.catalog.delete_many(ALIASES, {"namespace": namespace, "model_id": model_id})
        await self.catalog.delete(MODELS, model_key(namespace, model_id))
        return record

    # --- aliases ------------------------------------------------------------------------------

    async def set_alias(self, namespace: str, model_id: str, alias: str) -> tuple[dict, str | None]:
        """Point `{name}@{alias}` at a registered model (moving it from another version of the same
        name). Returns the updated record and the model id the alias left (or None)."""
        check_alias(alias)
        record = await self.get(namespace, model_id)
        if record["status"] != ModelStatus.REGISTERED:
            raise Conflict(f"model {model_id!r} is {record['status']}: only a registered model takes an alias",
                           details={"model_id": model_id, "status": record["status"]})
        key = alias_key(namespace, record["name"], alias)
        previous = await self.catalog.get(ALIASES, key)
        await self.catalog.upsert(ALIASES, key, {"namespace": namespace, "name": record["name"], "alias": alias,
                                                 "model_id": model_id, "updated_at": now()})
        moved_from = previous["model_id"] if previous and previous["model_id"] != model_id else None
        if moved_from:
            await self._sync_aliases(namespace, moved_from)
        return await self._sync_aliases(namespace, model_id) or record, moved_from

    async def remove_alias(self, namespace: str, model_id: str, alias: str) -> dict:
        check_alias(alias)
        record = await self.get(namespace, model_id)
        key = alias_key(namespace, record["name"], alias)
        entry = await self.catalog.get(ALIASES, key)
        if entry is None or entry.get("model_id") != model_id:
            where = f"points at {entry['model_id']!r}" if entry else "does not exist"
            raise NotFound(f"alias {record['name']}@{alias} {where}, not at {model_id!r}, in namespace {namespace!r}",
                           details={"model_id": model_id, "alias": alias})
        await self.catalog.delete(ALIASES, key)
        return await self._sync_aliases(namespace, model_id) or record

    async def _sync_aliases(self, namespace: str, model_id: str) -> dict | None:
        """The record's `aliases` list mirrors the alias records (which `resolve` trusts)."""
        entries = await self.catalog.find(ALIASES, {"namespace": namespace, "model_id": model_id})
        return await self.update(namespace, model_id, {"aliases": sorted(e["alias"] for e in entries)})

def validation_timeout_s(settings: Settings, size_bytes: int) -> float:
    configured = getattr(settings, "models_validation_timeout_s", None)
    return float(configured) if configured else VALIDATION_BASE_S + size_bytes / VALIDATION_BYTES_PER_S


def problem(rule_id: str, message: str, file: str = "") -> dict[str, str]:
    return {"rule_id": rule_id, "file": file, "message": message}


def as_event_findings(errors: list[dict]) -> list[Finding]:
    return [Finding(rule_id=e["rule_id"], severity="error", file=e.get("file", ""), line=0, message=e["message"]) for e in errors]


__all__ = [
    "ALIASES", "MODELS", "ModelRegistry", "archive_key", "check_alias", "check_name", "describe_finding", "model_id_for",
    "parse_version",
]
