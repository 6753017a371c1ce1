"""What an ingest job needs besides its rows: stable ids, blob types, the plugin spec Ray workers run
(archive checked against its digest, secrets context, asset access, sandbox options)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from engine.ingest.worker import PluginSpec
from engine.plugins.extractors.pipeline import TEXT_MIME_TYPES
from events.errors import NotFound
from functions.records.secret_store import SecretsStore
from functions.services.model_deploy import model_resources
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.settings import Settings


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def object_id_for(namespace: str, bucket: str, key: str) -> str:
    """Stable across versions (the object is the same object when it changes); the namespace is
    part of it, as of the object's location: `docs/a.txt` of two namespaces are two objects."""
    return "obj_" + _digest(namespace, bucket, key)[:24]


def document_id_for(collection_id: str, bucket: str, key: str, marker: str) -> str:
    """One per collection and object version: a rerun or redelivery gets the same id."""
    return "doc_" + _digest(collection_id, bucket, key, marker)[:24]


def scoped_document_id(collection_id: str, object_id: str, local_id: str) -> str:
    """The stored id of a document a plugin named `local_id` (a chunk, a frame): derived inside the
    platform from the collection and the object, so no plugin output can name, overwrite or
    poison a document of another collection, namespace or object."""
    return "doc_" + _digest(collection_id, object_id, local_id)[:24]


def blob_type_for(mime: str) -> str:
    mime = mime.split(";", 1)[0].strip().lower()
    if mime.startswith("text/") or mime in TEXT_MIME_TYPES:
        return "text"
    for prefix, kind in (("image/", "image"), ("video/", "video"), ("audio/", "audio")):
        if mime.startswith(prefix):
            return kind
    return "pdf" if mime == "application/pdf" else "file"


class IngestRefused(Exception):
    """The task cannot run: nothing was written. The message is the event's `reason`."""


async def plugin_spec(
    catalog: Catalog, store: ObjectStore, settings: Settings, collection: dict, plugin: dict, *, gpus: int,
) -> PluginSpec:
    """What Ray workers need to run the collection's plugin version: the archive (checked against
    the registered digest, then put in Ray's object store), parameters, secrets context, features."""
    import ray

    archive = plugin["archive"]
    try:
        data = await store.get_bytes(archive["bucket"], archive["key"])
    except NotFound as exc:
        raise IngestRefused(f"the archive of plugin {plugin['plugin_name']} {plugin['version']} is missing from the object store") from exc
    if hashlib.sha256(data).hexdigest() != plugin["sha256"]:
        raise IngestRefused(
            f"the archive of plugin {plugin['plugin_name']} {plugin['version']} changed after registration; refusing to run it"
        )
    manifest = plugin.get("manifest") or {}
    return PluginSpec(
        plugin_id=plugin["plugin_id"], namespace=collection["namespace"], name=plugin["plugin_name"], version=plugin["version"],
        sha256=plugin["sha256"], archive=await asyncio.to_thread(ray.put, data),
        parameters=dict(collection["feature_extractor"].get("parameters") or {}),
        collection_id=collection["collection_id"], input_fields=tuple(manifest.get("input_fields") or ()),
        features=tuple((v["name"], int(v["dimensions"])) for v in collection["vector_indexes"]),
        context=await SecretsStore.from_settings(catalog, settings).context_for(collection["namespace"]),
        available_gpus=gpus, asset_access=asset_access(settings),
        model_resources=await model_resources(catalog, collection["namespace"]),
        network_allow=tuple(plugin.get("network_allow") or ()), sandbox=sandbox_options(settings).as_dict(),
    )


def asset_access(settings: Settings) -> dict[str, Any]:
    """How the trusted side of a plugin host fetches the objects its `open_asset` asks for: the
    store's location and credentials (which never reach the host) and the data bucket, of which
    the host reads only its namespace's folder (`infra/objectstore/tenant.py`)."""
    if settings.effective_object_store == "s3":
        secret = settings.s3_secret_access_key
        return {"kind": "s3", "endpoint_url": settings.s3_endpoint_url, "region": settings.s3_region,
                "data_bucket": settings.data_bucket, "access_key_id": settings.s3_access_key_id,
                "secret_access_key": secret.get_secret_value() if secret else None}
    return {"kind": "local", "root": str(settings.data_dir / "objects"), "data_bucket": settings.data_bucket}


def sandbox_options(settings: Settings) -> Any:
    """How plugin hosts start, from the settings (carried to Ray workers in the spec)."""
    from engine.sandbox.client import SandboxOptions

    return SandboxOptions(
        enabled=settings.sandbox == "on", allow_degraded=settings.sandbox_allow_degraded,
        cache_root=str(settings.sandbox_cache_dir or ""),
        memory_bytes=int(settings.sandbox_memory_gb * 2**30) if settings.sandbox_memory_gb else None,
        cpu_seconds=settings.sandbox_cpu_seconds, call_timeout_s=settings.sandbox_call_timeout_s,
        pinned_hosts=dict(settings.egress_pinned_hosts), denied_ports=tuple(p for p in (settings.port,) if p),
        spare_hosts=settings.validation_warm_hosts, spare_idle_s=settings.validation_warm_idle_s,
    )

